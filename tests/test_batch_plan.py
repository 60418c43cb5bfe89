"""naming.py and batch/plan.py: output names, and where each input of a run goes."""

from __future__ import annotations

from pathlib import Path

import pytest

from sam_deblur_cli.batch.plan import Job, check_jobs, plan_batch, plan_files, scan_folder
from sam_deblur_cli.errors import UsageError
from sam_deblur_cli.naming import default_output


def _touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def test_default_output_sits_beside_the_input_with_a_suffix(tmp_path: Path) -> None:
    assert default_output(tmp_path / "photo.jpg") == tmp_path / "photo_deblurred.jpg"
    assert default_output(tmp_path / "a.b.PNG") == tmp_path / "a.b_deblurred.PNG"
    assert default_output(tmp_path / "photo.jpg", "png") == tmp_path / "photo_deblurred.png"


def test_plan_files_output_file_folder_and_trailing_slash(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jpg", tmp_path / "sub" / "b.png"
    assert plan_files([a]) == [Job(a, tmp_path / "a_deblurred.jpg")]
    assert plan_files([a], str(tmp_path / "x.png")) == [Job(a, tmp_path / "x.png")]
    out = tmp_path / "out"
    assert plan_files([a], f"{out}/")[0].dst == out / "a.jpg"
    out.mkdir()
    assert plan_files([a], str(out))[0].dst == out / "a.jpg"
    several = plan_files([a, b, a], str(tmp_path / "new"), format="tiff")
    assert [job.dst for job in several] == [tmp_path / "new" / "a.tif", tmp_path / "new" / "b.tif"]


def test_plan_files_refuses_collisions_and_overwriting_inputs(tmp_path: Path) -> None:
    _touch(tmp_path, "a.jpg", "x/a.jpg")
    with pytest.raises(UsageError, match="both be written"):
        plan_files([tmp_path / "a.jpg", tmp_path / "x" / "a.jpg"], str(tmp_path / "out"))
    with pytest.raises(UsageError, match="replace an input"):
        plan_files([tmp_path / "a.jpg"], str(tmp_path / "a.jpg"))
    with pytest.raises(UsageError, match="one image"):
        plan_files([tmp_path / "a.jpg", tmp_path / "x" / "a.jpg"], masks_file=tmp_path / "m.png")


def test_scan_folder_finds_images_only_and_skips_the_output_folder(tmp_path: Path) -> None:
    _touch(tmp_path, "b.JPG", "a.png", "notes.txt", ".hidden.png", "sub/c.tif", "out/d.png")
    assert scan_folder(tmp_path, recursive=False) == [tmp_path / "a.png", tmp_path / "b.JPG"]
    found = scan_folder(tmp_path, recursive=True, exclude=tmp_path / "out")
    assert found == [tmp_path / "a.png", tmp_path / "b.JPG", tmp_path / "sub" / "c.tif"]
    with pytest.raises(UsageError, match="not a folder"):
        scan_folder(tmp_path / "a.png", recursive=False)


def test_plan_batch_mirrors_the_tree_and_disambiguates_equal_stems(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    _touch(src, "a.png", "a.jpg", "x/a.png", "y/a.png", "y/b.webp")
    jobs = plan_batch(src, out, recursive=True)
    assert {j.src.relative_to(src).as_posix(): j.dst.relative_to(out).as_posix() for j in jobs} == {
        "a.jpg": "a.jpg",
        "a.png": "a.png",
        "x/a.png": "x/a.png",
        "y/a.png": "y/a.png",
        "y/b.webp": "y/b.webp",
    }
    forced = plan_batch(src, out, recursive=False, format="png")
    assert sorted(j.dst.name for j in forced) == ["a_jpg.png", "a_png.png"]
    assert forced == plan_batch(src, out, recursive=False, format="png")  # deterministic


def test_plan_batch_into_its_own_folder_is_refused(tmp_path: Path) -> None:
    _touch(tmp_path, "a.png")
    with pytest.raises(UsageError, match="is the input folder"):
        plan_batch(tmp_path, tmp_path / "." / "")


def test_check_jobs_is_case_insensitive(tmp_path: Path) -> None:
    jobs = [
        Job(tmp_path / "a.png", tmp_path / "o" / "A.png"),
        Job(tmp_path / "b.png", tmp_path / "o" / "a.png"),
    ]
    with pytest.raises(UsageError):
        check_jobs(jobs)


def test_unknown_format_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="format"):
        plan_files([tmp_path / "a.png"], format="gif")
