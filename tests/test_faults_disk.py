"""A full disk, a quota or a file-size limit: one line naming the path and the free space,
no partial file, a batch that stops at the first such error; and the locks that let a rerun
tell a killed writer's temporary files from a live writer's."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from faults import all_entries, fault_env, file_size_limit, report, sam_deblur
from PIL import Image
from tiny_models import TinyEnv, console_script, run_cli

from sam_deblur_cli.errors import OutOfSpaceError
from sam_deblur_cli.files import atomic_file, atomic_folder, remove_stale_temporaries

PLAIN = ["--model", "nafnet-gopro", "--no-tlc", "--device", "cpu"]


def _inputs(folder: Path) -> Path:
    """Small flat photos, and c.png: 128 x 128 noise, whose output is some 49 KB."""
    folder.mkdir(parents=True)
    for name in ("a.png", "b.png", "d.png", "e.png"):
        Image.new("RGB", (16, 16), (120, 90, 60)).save(folder / name)
    noise = np.random.default_rng(23).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "c.png")
    return folder


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


@pytest.mark.subprocess
def test_over_a_file_size_limit_a_batch_stops_with_one_line_and_resumes(
    tiny_env: TinyEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, out = _inputs(tmp_path / "in"), tmp_path / "out"
    argv = ["batch", src, "-o", out, "--json", *PLAIN]
    limited = sam_deblur(argv, fault_env(tiny_env), preexec_fn=file_size_limit(16_000))
    assert limited.returncode == 2
    line = _one_error_line(limited.stderr)
    assert f"{out / 'c.png'}" in line and "File too large" in line and "free in" in line
    assert "3 of 5 input(s) not done" in line
    report({"disk": "RLIMIT_FSIZE 16000 (EFBIG)", "exit": limited.returncode, "line": line})
    assert all_entries(out) == ["a.png", "b.png"]  # no partial c.png, no temporary file
    code, _, err = run_cli(capsys, *argv)
    assert code == 0, err
    assert all_entries(out) == ["a.png", "b.png", "c.png", "d.png", "e.png"]


@pytest.mark.subprocess
def test_a_full_file_system_stops_the_batch_with_the_free_space_named(
    tiny_env: TinyEnv, tmp_path: Path
) -> None:
    """ENOSPC from a 32 KB tmpfs, mounted in a private user and mount namespace."""
    unshare = shutil.which("unshare")
    probe = (
        subprocess.run([unshare or "unshare", "-Urm", "true"], capture_output=True, check=False)
        if unshare
        else None
    )
    if probe is None or probe.returncode != 0:
        pytest.skip("no unprivileged mount namespace here for a small tmpfs")
    src, out = _inputs(tmp_path / "in"), tmp_path / "out"
    out.mkdir()
    script = (
        'mount -t tmpfs -o size=32k none "$1" || exit 97; shift; '
        '"$@" 2>"$ERR"; echo "rc=$?"; cd "$OUT" && find . | sort'
    )
    argv = ["batch", str(src), "-o", str(out), "--json", *PLAIN]
    env = {**fault_env(tiny_env), "ERR": str(tmp_path / "err"), "OUT": str(out)}
    done = subprocess.run(
        [
            unshare or "unshare",
            "-Urm",
            "sh",
            "-c",
            script,
            "sh",
            str(out),
            str(console_script()),
            *argv,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    if done.returncode == 97:
        pytest.skip("tmpfs cannot be mounted here")
    lines = done.stdout.splitlines()
    stdout_records = [line for line in lines if line.startswith("{")]
    assert "rc=2" in lines, done.stdout + done.stderr
    assert len(stdout_records) == 2  # a.png and b.png
    listing = lines[lines.index("rc=2") + 1 :]
    assert listing == [".", "./a.png", "./b.png"]  # no partial c.png, no temporary file
    line = _one_error_line((tmp_path / "err").read_text())
    assert "No space left on device" in line and "free in" in line and "c.png" in line
    report({"disk": "tmpfs 32k (ENOSPC)", "exit": 2, "line": line})


def test_out_of_space_inside_the_writer_becomes_one_sentence(tmp_path: Path) -> None:
    """/dev/full answers every write with ENOSPC: the temporary is removed, the target kept."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    target = tmp_path / "out.png"
    target.write_bytes(b"old")
    with pytest.raises(OutOfSpaceError) as caught, atomic_file(target) as handle:
        handle.write(b"new")
        with open("/dev/full", "wb") as full:
            full.write(b"x")
            full.flush()
    assert str(target) in str(caught.value) and "No space left" in str(caught.value)
    assert "free in" in str(caught.value) and "\n" not in str(caught.value)
    assert all_entries(tmp_path) == ["out.png"] and target.read_bytes() == b"old"


def test_a_live_writers_temporary_is_kept_and_a_dead_writers_removed(tmp_path: Path) -> None:
    target = tmp_path / "photo.png"
    with atomic_file(target) as live:
        live.write(b"new")
        dead = tmp_path / ".other.0123456789ab.tmp.png"  # what a killed writer leaves
        dead.write_bytes(b"half")
        dead_folder = tmp_path / ".masks.0123456789ab.tmp"
        (dead_folder / "sub").mkdir(parents=True)
        user_file = tmp_path / ".notes.tmp.png"  # hidden, but not one of ours
        user_file.write_bytes(b"mine")
        removed = remove_stale_temporaries(tmp_path)
        assert sorted(removed) == sorted([dead, dead_folder])
        assert Path(live.name).exists()
    assert target.read_bytes() == b"new"
    assert all_entries(tmp_path) == [".notes.tmp.png", "photo.png"]


def test_a_live_staging_folder_is_kept(tmp_path: Path) -> None:
    with atomic_folder(tmp_path / "masks") as staging:
        (staging / "a.png").write_bytes(b"x")
        assert remove_stale_temporaries(tmp_path) == []
    assert all_entries(tmp_path) == ["masks", "masks/a.png"]
