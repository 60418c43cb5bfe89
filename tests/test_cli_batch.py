"""`sam-deblur batch IN_DIR -o OUT_DIR`: tree mirroring, resume, isolated failures, exit codes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from broken_inputs import write_broken_inputs
from PIL import Image
from tiny_models import (
    SAM_NAME,
    TinyEnv,
    TinyEnvFactory,
    console_script,
    tree_hashes,
)
from tiny_models import (
    run_cli as _run,
)
from tiny_models import (
    save_photo as _photo,
)

CPU = ["--device", "cpu"]
PLAIN = ["--model", "nafnet-gopro", "--no-tlc", *CPU]  # TLC set-up costs a 256 x 256 run


def _statuses(stdout: str) -> dict[str, str]:
    records = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    return {
        Path(r["input"]).name if "/" in r["input"] else r["input"]: r["status"] for r in records
    }


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_recursive_batch_mirrors_the_tree_and_never_merges_two_inputs(
    tiny_env: TinyEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in"
    for name in ("a.png", "a.jpg", "x/a.png", "y/a.png", "y/z/b.jpg"):
        _photo(src / name)
    (src / "notes.txt").write_text("not an image")
    before = tree_hashes(src)
    code, _, err = _run(
        capsys, "batch", src, "-o", tmp_path / "out", "--recursive", "--format", "png", *PLAIN
    )
    assert code == 0, err
    assert _files(tmp_path / "out") == ["a_jpg.png", "a_png.png", "x/a.png", "y/a.png", "y/z/b.png"]
    assert tree_hashes(src) == before
    code, _, err = _run(capsys, "batch", src, "-o", tmp_path / "flat", *PLAIN)
    assert code == 0, err
    assert _files(tmp_path / "flat") == ["a.jpg", "a.png"]  # not recursive; formats kept
    assert Image.open(tmp_path / "flat" / "a.jpg").format == "JPEG"


@pytest.mark.subprocess
def test_batch_resumes_and_overwrite_redoes(
    tiny_env: TinyEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, out_dir = tmp_path / "in", tmp_path / "out"
    _photo(src / "a.png")
    _photo(src / "sub" / "b.jpg", "chelsea")
    # First run: the installed console script, with SAM masks (default model).
    first = subprocess.run(
        [
            str(console_script()),
            "batch",
            str(src),
            "-o",
            str(out_dir),
            "-r",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=tiny_env.subprocess_env(),
        check=False,
        timeout=180,
    )
    assert first.returncode == 0, first.stderr
    records = [json.loads(line) for line in first.stdout.splitlines()]
    assert [r["status"] for r in records] == ["ok", "ok"]
    assert all(r["masks"] > 0 and r["groups"] >= 1 for r in records)
    assert set(records[0]["seconds"]) == {"read", "masks", "deblur", "write"}
    assert _files(out_dir) == ["a.png", "sub/b.jpg"]
    stamps = {p: p.stat().st_mtime_ns for p in out_dir.rglob("*") if p.is_file()}
    code, out, err = _run(capsys, "batch", src, "-o", out_dir, "-r", "--json", *CPU)
    assert code == 0 and _statuses(out) == {"a.png": "skipped", "b.jpg": "skipped"}, err
    assert stamps == {p: p.stat().st_mtime_ns for p in out_dir.rglob("*") if p.is_file()}
    code, out, err = _run(capsys, "batch", src, "-o", out_dir, "-r", "--json", "--overwrite", *CPU)
    assert code == 0 and _statuses(out) == {"a.png": "ok", "b.jpg": "ok"}, err
    redone = [json.loads(line) for line in out.splitlines()]
    assert [r["masks"] for r in redone] == [r["masks"] for r in records]  # same SAM, same masks


def test_broken_inputs_are_isolated_and_summarised(
    tiny_env: TinyEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in"
    broken = write_broken_inputs(src)
    _photo(src / "good.png")
    before = tree_hashes(src)
    code, out, err = _run(capsys, "batch", src, "-o", tmp_path / "out", "--json", *PLAIN)
    assert code == 1
    statuses = _statuses(out)
    assert statuses.pop("good.png") == "ok"
    assert len(statuses) >= 10 and set(statuses.values()) == {"failed"}
    assert set(statuses) <= {p.name for p in broken.values()}
    assert f"{len(statuses)} of {len(statuses) + 1} input(s) failed" in err
    for name in statuses:
        assert name in err  # each failure named in the summary table
    assert _files(tmp_path / "out") == ["good.png"]
    assert tree_hashes(src) == before


def test_missing_sam_weights_stop_the_batch_before_any_image(
    tiny_env_factory: TinyEnvFactory,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sam_deblur_cli import imageio

    tiny_env_factory(imported=["segnafnet-gopro"])
    _photo(tmp_path / "in" / "a.png")
    reads: list[Path] = []
    monkeypatch.setattr(imageio, "read_image", lambda path, **kw: reads.append(path))
    batch = ["batch", tmp_path / "in", "-o", tmp_path / "out", *CPU]
    code, _, err = _run(capsys, *batch)
    assert code == 2
    assert f"sam-deblur weights import {SAM_NAME}" in err and "Traceback" not in err
    assert reads == [] and not (tmp_path / "out").exists()
    code, _, err = _run(capsys, *batch, "--sam", "nafnet-gopro")
    assert code == 2 and "not a Segment Anything model" in err and reads == []


def test_interrupt_leaves_finished_outputs_and_no_partial_file(
    tiny_env: TinyEnv,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("a.png", "b.png", "c.png"):
        _photo(tmp_path / "in" / name)
    real_save = Image.Image.save
    saves: list[int] = []

    def save_then_interrupt(self: Image.Image, fp: object, *args: object, **kwargs: object) -> None:
        saves.append(1)
        if len(saves) == 2:  # Ctrl-C in the middle of writing the second output
            fp.write(b"\x89PNG partial")  # type: ignore[attr-defined]
            raise KeyboardInterrupt
        real_save(self, fp, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Image.Image, "save", save_then_interrupt)
    code, _, err = _run(capsys, "batch", tmp_path / "in", "-o", tmp_path / "out", *PLAIN)
    monkeypatch.undo()
    assert code == 130 and "interrupted" in err
    assert _files(tmp_path / "out") == ["a.png"]  # no temporary or half-written file
    assert Image.open(tmp_path / "out" / "a.png").size == (64, 64)
