"""The video engine (``sam_deblur_cli.video``) with tiny real models on clips made by PyAV."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from tiny_models import TinyEnv
from video_clips import (
    VFR_STEPS,
    audio_packets,
    blurred_frames,
    decoded,
    make_clip,
    panning_frames,
)

from sam_deblur_cli.amg import RecipeOverrides
from sam_deblur_cli.pipeline import Deblurrer, DeblurSettings
from sam_deblur_cli.video.engine import VideoSettings, run_video
from sam_deblur_cli.video.keyframes import SCENE_CUT, KeyFrames, scene_change
from sam_deblur_cli.video.resume import work_folder
from sam_deblur_cli.video.write import EncodeOptions

LOSSLESS = EncodeOptions(codec="libx264rgb", crf=0)


def _deblurrer(model: str = "segnafnet-gopro") -> Deblurrer:
    return Deblurrer(DeblurSettings(recipe=RecipeOverrides(model=model), device="cpu", tlc=False))


def test_vfr_clip_keeps_every_timestamp_audio_bytes_and_deblurs_each_frame_as_a_photo(
    tiny_env: TinyEnv, tmp_path: Path
) -> None:
    src = tmp_path / "clip.mp4"
    stamps = make_clip(src, blurred_frames(9), steps=VFR_STEPS)
    dst = tmp_path / "out.mp4"
    deblurrer = _deblurrer()
    settings = VideoSettings(mask_every=1, segment_frames=4, encode=LOSSLESS)
    record = run_video(deblurrer, src, dst, settings=settings)
    assert record["status"] == "ok" and record["frames"] == 9 and record["key_frames"] == 9
    times_in, frames_in, _ = decoded(src)
    times_out, frames_out, _ = decoded(dst)
    assert [float(t) for t in times_in] == [s / 1000 for s in stamps]
    assert times_out == times_in
    assert audio_packets(dst) == audio_packets(src)
    for rgb_in, rgb_out in zip(frames_in, frames_out, strict=True):
        expected = np.clip(np.rint(deblurrer.deblur(rgb_in) * 255), 0, 255).astype(np.uint8)
        np.testing.assert_array_equal(rgb_out, expected)


def test_default_h264_over_several_segments_keeps_timestamps_rotation_and_tags(
    tiny_env: TinyEnv, tmp_path: Path
) -> None:
    import av

    src = tmp_path / "turned.mp4"
    make_clip(src, blurred_frames(10), rotation=90)
    dst = tmp_path / "turned_deblurred.mp4"
    record = run_video(
        _deblurrer("nafnet-gopro"), src, dst, settings=VideoSettings(segment_frames=3)
    )
    assert record["status"] == "ok" and record["encoding"].startswith("libx264 yuv420p")
    times_in, _, rotation_in = decoded(src)
    times_out, frames_out, rotation_out = decoded(dst)
    assert rotation_in == rotation_out == 90
    assert times_out == times_in and len(frames_out) == 10
    assert frames_out[0].shape == (48, 64, 3)  # stored size kept; the flag turns it for display
    with av.open(str(dst)) as container:
        assert container.metadata.get("title") == "test clip"
        assert container.streams.audio[0].metadata.get("language") == "eng"
    assert audio_packets(dst) == audio_packets(src)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no work folder left


def test_resume_after_an_interruption_redoes_no_finished_segment_and_gives_the_same_video(
    tiny_env: TinyEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "clip.mp4"
    make_clip(src, blurred_frames(10), steps=VFR_STEPS)
    settings = VideoSettings(mask_every=2, segment_frames=3, encode=LOSSLESS)
    whole = tmp_path / "whole.mp4"
    run_video(_deblurrer(), src, whole, settings=settings)

    calls: list[int] = []
    real = Deblurrer.deblur

    def interrupted(self: Deblurrer, rgb: np.ndarray, masks: object = None) -> np.ndarray:
        calls.append(1)
        if len(calls) == 8:
            raise KeyboardInterrupt
        return real(self, rgb, masks)  # type: ignore[arg-type]

    monkeypatch.setattr(Deblurrer, "deblur", interrupted)
    dst = tmp_path / "resumed.mp4"
    with pytest.raises(KeyboardInterrupt):
        run_video(_deblurrer(), src, dst, settings=settings)
    assert not dst.exists()  # no half-written output
    parts = sorted(p.name for p in work_folder(dst).iterdir())
    assert parts == ["seg-000000.mp4", "seg-000001.mp4", "settings.json"]  # no temp file left
    calls.clear()
    record = run_video(_deblurrer(), src, dst, settings=settings)
    assert record["resumed_from"] == 6 and len(calls) == 4 and record["frames"] == 10
    assert not work_folder(dst).exists()
    times_a, frames_a, _ = decoded(whole)
    times_b, frames_b, _ = decoded(dst)
    assert times_a == times_b
    for a, b in zip(frames_a, frames_b, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_batched_run_resumes_at_a_segment_with_the_same_key_frames_and_timestamps(
    tiny_env: TinyEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches of 4 straddle segments of 3: an interruption inside a batch keeps only whole
    segments, and the resumed run (its batches now start at the segment) agrees with an
    uninterrupted batched run as batches agree with each other."""
    src = tmp_path / "clip.mp4"
    make_clip(src, blurred_frames(10), steps=VFR_STEPS)
    settings = VideoSettings(mask_every=2, segment_frames=3, batch_frames=4, encode=LOSSLESS)
    whole = tmp_path / "whole.mp4"
    uninterrupted = run_video(_deblurrer(), src, whole, settings=settings)

    sizes: list[int] = []
    stop_at = [2]
    real = Deblurrer.deblur_batch

    def interrupted(self: Deblurrer, images: list[np.ndarray], masks: object = None) -> object:
        sizes.append(len(images))
        if len(sizes) == stop_at[0]:  # frames 4-7: 0-3 are out, only segment 0-2 is whole
            raise KeyboardInterrupt
        return real(self, images, masks)  # type: ignore[arg-type]

    monkeypatch.setattr(Deblurrer, "deblur_batch", interrupted)
    dst = tmp_path / "resumed.mp4"
    with pytest.raises(KeyboardInterrupt):
        run_video(_deblurrer(), src, dst, settings=settings)
    assert not dst.exists()
    assert sorted(p.name for p in work_folder(dst).iterdir()) == [
        "seg-000000.mp4",
        "settings.json",
    ]
    sizes.clear()
    stop_at[0] = 0
    record = run_video(_deblurrer(), src, dst, settings=settings)
    assert record["resumed_from"] == 3 and record["frames"] == 10
    assert sizes == [4, 3]  # frames 3-6 and 7-9; nothing before frame 3 is redone
    # key frames: 0, 2, 3 (segment start), 5, 6 (segment start), 8, 9 (segment start)
    assert uninterrupted["key_frames"] == 7 and record["key_frames"] == 5  # from frame 3 on
    times_a, frames_a, _ = decoded(whole)
    times_b, frames_b, _ = decoded(dst)
    assert times_a == times_b and len(frames_b) == 10
    for a, b in zip(frames_a, frames_b, strict=True):
        diff = np.abs(a.astype(int) - b.astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


@pytest.mark.parametrize("step", [2, 3, 6])
def test_the_default_scene_cut_sees_no_cut_in_a_pan_and_exactly_one_at_a_hard_cut(
    step: int,
) -> None:
    assert VideoSettings().scene_cut == SCENE_CUT
    pan = panning_frames(24, step=step)
    keys = KeyFrames(mask_every=8, scene_cut=SCENE_CUT)
    assert [i for i, rgb in enumerate(pan) if keys.is_key(i, rgb)] == [0, 8, 16]  # the schedule
    # margin: no step of the pan comes near the threshold, the cut is far above it
    assert max(scene_change(a, b) for a, b in pairwise(pan)) < SCENE_CUT / 1.5
    cut = panning_frames(24, step=step, cut_at=11)
    keys = KeyFrames(mask_every=8, scene_cut=SCENE_CUT)
    assert [i for i, rgb in enumerate(cut) if keys.is_key(i, rgb)] == [0, 8, 11, 19]
    assert scene_change(cut[10], cut[11]) > 3 * SCENE_CUT
    # 16-bit frames (10-bit video) are measured alike
    deep = [f.astype(np.uint16) * 257 for f in cut]
    keys = KeyFrames(mask_every=8, scene_cut=SCENE_CUT)
    assert [i for i, rgb in enumerate(deep) if keys.is_key(i, rgb)] == [0, 8, 11, 19]


def test_masks_of_a_panning_clip_with_a_cut_have_one_extra_key_frame_at_the_cut(
    tiny_env: TinyEnv, tmp_path: Path
) -> None:
    from sam_deblur_cli.video.engine import video_masks

    src = tmp_path / "pan.mp4"
    make_clip(src, panning_frames(14, step=3, cut_at=5), audio=False)
    generator = _deblurrer()._mask_generator()
    record = video_masks(generator, src, tmp_path / "m", mask_every=8)  # default scene cut
    assert record["key_frames"] == 3
    names = sorted(p.name for p in (tmp_path / "m").glob("frame_*.png"))
    assert names == ["frame_000000.png", "frame_000005.png", "frame_000013.png"]


def _ten_bit_codecs() -> list[str]:
    """Encoders of this PyAV wheel (of those the CLI names) that write yuv420p10le."""
    import av

    from sam_deblur_cli.video.write import CODECS

    found = []
    for name in ("hevc", "ffv1", "h264", "av1"):
        codec = CODECS[name]
        if codec in av.codecs_available:
            formats = [f.name for f in (av.Codec(codec, "w").video_formats or [])]
            if "yuv420p10le" in formats:
                found.append(name)
    return found


@pytest.mark.parametrize("name", ["hevc", "ffv1", "h264"])
def test_a_10_bit_video_stays_10_bit(tiny_env: TinyEnv, tmp_path: Path, name: str) -> None:
    import av

    from sam_deblur_cli.video.write import CODECS

    if name not in _ten_bit_codecs():
        pytest.skip(f"this PyAV wheel has no 10-bit {name} encoder")
    src = tmp_path / "deep.mkv"
    make_clip(src, blurred_frames(4), codec=CODECS[name], pix_fmt="yuv420p10le", audio=False)
    dst = tmp_path / "deep_deblurred.mkv"
    record = run_video(
        _deblurrer("nafnet-gopro"), src, dst, settings=VideoSettings(encode=EncodeOptions(name))
    )
    assert record["status"] == "ok" and record["frames"] == 4
    assert "yuv420p10le" in record["encoding"]
    with av.open(str(dst)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.pix_fmt == "yuv420p10le"
        frames = [f.to_ndarray(format="rgb48le") for f in container.decode(stream)]
    assert len(frames) == 4 and frames[0].dtype == np.uint16
    # more than 256 levels: the deblurred frames were not squeezed through 8 bits
    assert np.unique(frames[1]).size > 256
