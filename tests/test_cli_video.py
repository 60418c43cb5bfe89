"""`sam-deblur clip.mp4` and `sam-deblur masks clip.mp4` in-process, with tiny real models."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import av
import numpy as np
import pytest
from tiny_models import TinyEnv, file_hashes
from tiny_models import run_cli as _run
from video_clips import audio_packets, blurred_frames, decoded, make_clip

from sam_deblur_cli.masks import MaskGenerator
from sam_deblur_cli.pipeline import Deblurrer

PLAIN = ["--model", "nafnet-gopro", "--no-tlc", "--device", "cpu"]
MAP = ["--no-tlc", "--device", "cpu"]


def _broken(folder: Path, good: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    data = good.read_bytes()
    files = {
        "truncated": folder / "truncated.mp4",
        "corrupt": folder / "corrupt.mov",
        "empty": folder / "empty.mkv",
        "no video": folder / "sound.mkv",
    }
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["corrupt"].write_bytes(np.random.default_rng(0).bytes(5000))
    files["empty"].write_bytes(b"")
    make_sound_only(files["no video"])
    return files


def make_sound_only(path: Path) -> None:
    import av

    with av.open(str(path), "w") as out:
        tone = out.add_stream("aac", rate=16000)
        tone.layout = "mono"
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
        )
        frame.sample_rate, frame.pts = 16000, 0
        out.mux(tone.encode(frame))
        out.mux(tone.encode(None))


def test_a_clip_lands_beside_itself_with_its_frames_and_sound_and_broken_videos_fail_one_by_one(
    tiny_env: TinyEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clip = tmp_path / "in" / "clip.mp4"
    make_clip(clip, blurred_frames(8))
    broken = _broken(tmp_path / "bad", clip)
    before = file_hashes([clip, *broken.values()])
    code, out, err = _run(capsys, clip, *broken.values(), *PLAIN, "--json")
    assert code == 1, err
    records = {Path(r["input"]).name: r for r in map(json.loads, out.splitlines())}
    assert records["clip.mp4"]["status"] == "ok" and records["clip.mp4"]["frames"] == 8
    result = tmp_path / "in" / "clip_deblurred.mp4"
    assert decoded(result)[0] == decoded(clip)[0]
    assert audio_packets(result) == audio_packets(clip)
    for name, path in broken.items():
        record = records[path.name]
        assert record["status"] == "failed", name
        assert str(path) in record["error"] and "\n" not in record["error"], name
    assert "no video stream" in records["sound.mkv"]["error"]
    assert file_hashes([clip, *broken.values()]) == before
    assert sorted(p.name for p in clip.parent.iterdir()) == ["clip.mp4", "clip_deblurred.mp4"]
    assert sorted(p.name for p in (tmp_path / "bad").iterdir()) == sorted(
        p.name for p in broken.values()
    )


def test_mask_every_reuses_key_frame_masks_and_a_scene_cut_forces_a_key_frame(
    tiny_env: TinyEnv,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runs: list[int] = []
    real = MaskGenerator._generate

    def counted(self: MaskGenerator, rgb: np.ndarray) -> object:
        runs.append(1)
        return real(self, rgb)

    monkeypatch.setattr(MaskGenerator, "_generate", counted)
    steady = tmp_path / "steady.mp4"
    make_clip(steady, blurred_frames(10))
    code, out, err = _run(capsys, steady, *MAP, "--mask-every", "4", "--scene-cut", "0.3", "--json")
    assert code == 0, err
    assert json.loads(out)["key_frames"] == 3 and len(runs) == 3  # frames 0, 4, 8

    runs.clear()
    cut = tmp_path / "cut.mp4"
    make_clip(cut, blurred_frames(10, cut_at=6))
    code, out, err = _run(capsys, cut, *MAP, "--mask-every", "4", "--scene-cut", "0.3", "--json")
    assert code == 0, err
    assert json.loads(out)["key_frames"] == 3 and len(runs) == 3  # frames 0, 4, 6 (the cut)


@pytest.mark.parametrize("batch", ["1", "4"])
def test_a_failing_frame_stops_its_video_by_name_or_keeps_its_input_pixels_when_asked(
    tiny_env: TinyEnv,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    batch: str,
) -> None:
    clip = tmp_path / "clip.mkv"
    make_clip(clip, blurred_frames(6))
    real = Deblurrer.deblur
    real_batch = Deblurrer.deblur_batch
    seen: list[int] = []
    batched: list[int] = []

    def flaky(self: Deblurrer, rgb: np.ndarray, masks: object = None) -> np.ndarray:
        seen.append(1)
        if len(seen) == 4:  # the fourth frame of the run: frame 3
            raise RuntimeError("boom")
        return real(self, rgb, masks)  # type: ignore[arg-type]

    def flaky_batch(self: Deblurrer, rgbs: list[np.ndarray], masks: object = None) -> object:
        first = len(batched)
        batched.extend(range(first, first + len(rgbs)))
        if 3 in batched[first:]:  # the batch holding frame 3 fails too
            raise RuntimeError("boom")
        return real_batch(self, rgbs, masks)  # type: ignore[arg-type]

    monkeypatch.setattr(Deblurrer, "deblur", flaky)
    monkeypatch.setattr(Deblurrer, "deblur_batch", flaky_batch)
    code, _, err = _run(capsys, clip, *PLAIN, "--batch-frames", batch)
    assert code == 1 and "frame 3 (at 0.120 s)" in err and "boom" in err
    assert not (tmp_path / "clip_deblurred.mkv").exists()
    assert len(batched) == (0 if batch == "1" else 4)
    seen.clear()
    batched.clear()
    code, _, err = _run(
        capsys,
        clip,
        *PLAIN,
        "--keep-going-frames",
        "--codec",
        "ffv1",
        "--pix-fmt",
        "bgr0",
        "--batch-frames",
        batch,
    )
    assert code == 0, err
    assert "frames [3] failed and kept their input pixels" in err
    _, frames_in, _ = decoded(clip)
    times_out, frames_out, _ = decoded(tmp_path / "clip_deblurred.mkv")
    assert len(frames_out) == 6 and times_out == decoded(clip)[0]
    np.testing.assert_array_equal(frames_out[3], frames_in[3])
    assert not np.array_equal(frames_out[2], frames_in[2])


def test_masks_of_a_video_are_key_frame_segmasks_with_a_frame_map(
    tiny_env: TinyEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clip = tmp_path / "clip.mp4"
    stamps = make_clip(clip, blurred_frames(5), rotation=90)
    code, _, err = _run(
        capsys,
        "masks",
        clip,
        "-o",
        tmp_path / "m",
        "--mask-every",
        "2",
        "--scene-cut",
        "0",
        "-d",
        "cpu",
    )
    assert code == 0, err
    folder = tmp_path / "m" / "clip"
    with open(folder / "frames.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [round(float(r["seconds"]) * 1000) for r in rows] == stamps
    assert [r["segmask"] for r in rows] == ["frame_000000.png"] * 2 + ["frame_000002.png"] * 2 + [
        "frame_000004.png"
    ]
    from PIL import Image

    with Image.open(folder / "frame_000002.png") as segmask:
        assert segmask.size == (48, 64) and segmask.mode == "L"  # display orientation (turned)


def test_batched_frames_match_frames_one_at_a_time_on_a_lossless_codec(
    tiny_env: TinyEnv,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sam_deblur_cli import restore

    sizes: list[int] = []
    real = restore.restore_batch

    def counted(net: object, images: list[np.ndarray], *args: object, **kw: object) -> object:
        sizes.append(len(images))
        return real(net, images, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(restore, "restore_batch", counted)
    clip = tmp_path / "clip.mp4"
    make_clip(clip, blurred_frames(10, cut_at=6))
    lossless = ["--codec", "ffv1", "--pix-fmt", "bgr0", "--json"]
    keys = ["--mask-every", "3", "--scene-cut", "0.3"]
    outputs = {}
    for batch in ("1", "4", "auto"):
        dst = tmp_path / f"out-{batch}.mkv"
        code, out, err = _run(
            capsys, clip, *MAP, *keys, *lossless, "-o", dst, "--batch-frames", batch
        )
        assert code == 0, err
        assert json.loads(out)["key_frames"] == 4  # frames 0, 3, 6 (the cut) and 9
        outputs[batch] = decoded(dst)
    assert sizes == [4, 4, 2]  # "1" never batches, nor does auto on the CPU
    times_1, frames_1, _ = outputs["1"]
    for batch in ("4", "auto"):
        times_b, frames_b, _ = outputs[batch]
        assert times_b == times_1 and len(frames_b) == 10
        for a, b in zip(frames_1, frames_b, strict=True):
            diff = np.abs(a.astype(int) - b.astype(int))
            # float rounding of a batch (below 1e-6) may move a value across a rounding edge
            assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_a_batch_folder_with_a_video_and_photos_mirrors_both_and_skips_the_finished_video(
    tiny_env: TinyEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tiny_models import save_photo

    src, out_dir = tmp_path / "in", tmp_path / "out"
    make_clip(src / "trip" / "clip.mov", blurred_frames(5))
    save_photo(src / "a.png")
    save_photo(src / "trip" / "b.jpg", "chelsea")
    before = file_hashes(sorted(p for p in src.rglob("*") if p.is_file()))
    batch = ["batch", src, "-o", out_dir, "-r", "--json", *PLAIN]
    code, out, err = _run(capsys, *batch)
    assert code == 0, err
    records = {Path(r["input"]).name: r for r in map(json.loads, out.splitlines())}
    assert {k: r["status"] for k, r in records.items()} == dict.fromkeys(
        ["a.png", "b.jpg", "clip.mov"], "ok"
    )
    assert records["clip.mov"]["frames"] == 5
    files = sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*") if p.is_file())
    assert files == ["a.png", "trip/b.jpg", "trip/clip.mov"]  # the video keeps its extension
    assert decoded(out_dir / "trip" / "clip.mov")[0] == decoded(src / "trip" / "clip.mov")[0]
    stamp = (out_dir / "trip" / "clip.mov").stat().st_mtime_ns
    code, out, err = _run(capsys, *batch)
    assert code == 0, err
    assert {Path(r["input"]).name: r["status"] for r in map(json.loads, out.splitlines())} == (
        dict.fromkeys(["a.png", "b.jpg", "clip.mov"], "skipped")
    )
    assert (out_dir / "trip" / "clip.mov").stat().st_mtime_ns == stamp
    assert file_hashes(sorted(p for p in src.rglob("*") if p.is_file())) == before


def test_a_video_shows_frames_done_of_total_fps_and_time_left_on_a_terminal(
    tiny_env: TinyEnv,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import io
    import re

    from rich.console import Console

    from sam_deblur_cli.cli import deblur, output

    screen = io.StringIO()
    terminal = Console(file=screen, force_terminal=True, width=200)
    monkeypatch.setattr(output, "err_console", terminal)
    monkeypatch.setattr(deblur, "err_console", terminal)
    clip = tmp_path / "clip.mp4"
    make_clip(clip, blurred_frames(9))
    code, _, err = _run(capsys, clip, *PLAIN, "--batch-frames", "1")
    assert code == 0, err
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.getvalue())
    # the bar's last state: name, 9 of 9 frames, time left, frames per second
    assert re.search(r"clip\.mp4 .* 9/9 +[0-9:-]+ +\d+\.\d\d frames/s", shown), shown[-600:]


def test_audio_the_output_cannot_hold_is_re_encoded_with_a_note_on_stderr_and_in_json(
    tiny_env: TinyEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from video_clips import Sound

    clip = tmp_path / "clip.mkv"
    make_clip(clip, blurred_frames(4), sound=Sound("pcm_s16le", 44100, "stereo"))
    for extra in ([], ["--json"]):
        dst = tmp_path / f"out{len(extra)}.webm"
        code, out, err = _run(capsys, clip, *PLAIN, "-o", dst, *extra)
        assert code == 0, err
        note = f"{clip}: audio stream 1 (pcm_s16le) re-encoded as Opus 48000 Hz stereo"
        assert "".join(note.split()) in "".join(err.split())  # the warning, wrapped by Rich
        if extra:
            assert [n.startswith(note) for n in json.loads(out)["notes"]] == [True]
        with av.open(str(dst)) as container:
            assert container.streams.audio[0].codec_context.name == "opus"
