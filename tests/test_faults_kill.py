"""kill -9 at several points of a run, then a rerun: exactly an unbroken run's outputs.

The child is the installed console script, killed with SIGKILL (no handler, no cleanup):
mid-write (just before a finished temporary file is renamed, via the fault hook of
``faults.py``) and at a seeded random moment after some outputs appeared. The rerun must
leave the output tree byte for byte as an unbroken run leaves it, with no hidden
temporary file either.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from faults import (
    LONG,
    all_entries,
    count_files,
    fault_env,
    kill_when,
    report,
    same_tree,
    seeded_delays,
)
from tiny_models import TinyEnv, run_cli, save_photo

pytestmark = pytest.mark.subprocess

PLAIN = ["--model", "nafnet-gopro", "--no-tlc", "--device", "cpu"]
PHOTOS = {
    "a.png": "astronaut",
    "b.jpg": "chelsea",
    "c.png": "coffee",
    "sub/d.png": "chelsea",
    "sub/e.tif": "astronaut",
}


def _inputs(folder: Path) -> Path:
    for name, photo in PHOTOS.items():
        save_photo(folder / name, photo)
    return folder


# Kill points: "fsync-N" dies just before the N-th file is renamed into place (written in
# full); "delay-K" dies at the K-th seeded random moment after the first output appeared.
POINTS = ["fsync-3", "delay-0"]
if LONG:
    POINTS = [f"fsync-{n}" for n in range(1, 6)] + [f"delay-{k}" for k in range(10)]


@pytest.mark.parametrize("point", POINTS)
def test_batch_killed_then_rerun_ends_as_an_unbroken_run(
    tiny_env: TinyEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str], point: str
) -> None:
    src = _inputs(tmp_path / "in")
    code, _, err = run_cli(capsys, "batch", src, "-o", tmp_path / "unbroken", "-r", *PLAIN)
    assert code == 0, err
    out = tmp_path / "out"
    argv = ["batch", src, "-o", out, "-r", *PLAIN]
    how, _, number = point.partition("-")
    if how == "fsync":  # the N-th output written in full, killed before its rename
        status = kill_when(argv, fault_env(tiny_env, kill_at_fsync=int(number)), lambda: False)
        assert status == -9
        assert count_files(out)() == int(number) - 1
        hidden = [name for name in all_entries(out) if Path(name).name.startswith(".")]
        assert hidden != []  # the killed write's temporary
    else:
        delay = seeded_delays(23, int(number) + 1, 1.0)[int(number)]
        status = kill_when(argv, fault_env(tiny_env), lambda: count_files(out)() >= 1, delay=delay)
    left = all_entries(out) if out.exists() else []
    code, _, err = run_cli(capsys, *argv)
    assert code == 0, err
    assert same_tree(out, tmp_path / "unbroken"), (all_entries(out), err)
    report({"kill": f"batch {point}", "status": status, "left_by_kill": left, "rerun": "same"})


def test_video_killed_while_writing_its_final_file_then_rerun_gives_the_same_bytes(
    tiny_env: TinyEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from video_clips import blurred_frames, make_clip

    src = tmp_path / "in" / "clip.mp4"
    make_clip(src, blurred_frames(6))
    code, _, err = run_cli(capsys, src, "-o", tmp_path / "unbroken" / "clip.mp4", *PLAIN)
    assert code == 0, err
    out = tmp_path / "out"
    out.mkdir()
    argv = [src, "-o", out / "clip.mp4", *PLAIN]
    # fsyncs: the work folder's settings.json, the one segment, then the final file
    assert kill_when(argv, fault_env(tiny_env, kill_at_fsync=3), lambda: False) == -9
    assert not (out / "clip.mp4").exists()
    assert any(".tmp.mp4" in name for name in all_entries(out))  # the killed final file's
    left = all_entries(out)
    code, _, err = run_cli(capsys, *argv)
    assert code == 0, err
    assert same_tree(out, tmp_path / "unbroken"), all_entries(out)
    report({"kill": "video fsync-3", "status": -9, "left_by_kill": left, "rerun": "same"})


def test_masks_killed_mid_write_then_rerun_gives_the_same_files(
    tiny_env: TinyEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photos = [save_photo(tmp_path / "in" / f"{name}.png", name) for name in ("astronaut", "coffee")]
    masks = ["masks", *photos, "--format", "segmask,npz", "--device", "cpu", "-o"]
    code, _, err = run_cli(capsys, *masks, tmp_path / "unbroken")
    assert code == 0, err
    out = tmp_path / "out"
    # the unbroken run filled the mask cache: the child's fsyncs are its outputs, two a photo
    env = fault_env(tiny_env, tiny_sam=True, kill_at_fsync=3)
    assert kill_when([*masks, out], env, lambda: False) == -9
    left = all_entries(out)
    assert any(Path(name).name.startswith(".") for name in left), left
    code, _, err = run_cli(capsys, *masks, out)
    assert code == 0, err
    assert same_tree(out, tmp_path / "unbroken"), all_entries(out)
    report({"kill": "masks fsync-3", "status": -9, "left_by_kill": left, "rerun": "same"})


TRAIN = ["--width", "8", "--enc-blocks", "1,1,1,1", "--crop", "32", "--batch", "2", "-q"]
TRAIN += [
    "--workers",
    "0",
    "--lr",
    "5e-3",
    "--variant",
    "plain",
    "--steps",
    "6",
    "--save-every",
    "2",
]


@pytest.mark.usefixtures("one_torch_thread")
def test_train_killed_while_saving_then_resumed_exports_the_same_model(
    tiny_env: TinyEnv, tmp_path: Path
) -> None:
    from train_data import write_pairs

    from sam_deblur_cli.cli import main

    pairs = write_pairs(tmp_path / "pairs")
    assert main(["train", str(pairs), "-o", str(tmp_path / "unbroken"), *TRAIN]) == 0
    run = tmp_path / "run"
    # fsyncs: config.json, log.csv, then checkpoints: killed while the step-6 one is saved
    env = {**fault_env(tiny_env, kill_at_fsync=6), "OMP_NUM_THREADS": "1"}
    assert kill_when(["train", pairs, "-o", run, *TRAIN], env, lambda: False) == -9
    left = all_entries(run)
    assert not (run / "model.pth").exists()
    assert any(Path(name).name.startswith(".") for name in left), left
    assert main(["train", "--resume", str(run), "-q"]) == 0
    assert (run / "model.pth").read_bytes() == (tmp_path / "unbroken" / "model.pth").read_bytes()
    assert not [name for name in all_entries(run) if Path(name).name.startswith(".")]
    report({"kill": "train fsync-6", "status": -9, "left_by_kill": left, "rerun": "same"})
