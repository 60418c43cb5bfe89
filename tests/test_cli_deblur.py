"""`sam-deblur IMAGE...`: the default command, in-process (``cli.main``) and as the console script.

Every run uses the tiny random-weight models of ``tiny_models`` through a test manifest;
``--device cpu`` keeps the "no GPU, running on the CPU" warning out of the checked output.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from broken_inputs import write_broken_inputs
from PIL import Image
from tiny_models import (
    SAM_NAME,
    TinyEnv,
    TinyEnvFactory,
    console_script,
    file_hashes,
    tree_hashes,
    write_special_photos,
)
from tiny_models import (
    run_cli as _run,
)
from tiny_models import (
    save_photo as _photo,
)

CPU = ["--device", "cpu"]
NO_TLC = ["--no-tlc", *CPU]  # where TLC is not the point: its set-up costs a 256 x 256 run
PLAIN = ["--model", "nafnet-gopro", *NO_TLC]


def _records(stdout: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def test_one_photo_with_sam_masks_lands_beside_it_rotated_with_its_profile_and_a_note(
    tiny_env: TinyEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photo = write_special_photos(tmp_path / "in")["exif_rotated"]  # shown 64 wide, 48 tall
    before = file_hashes([photo])
    # A 1-point grid keeps SAM cheap; as an override of the recipe it must be pointed out.
    overrides = ["--points-per-side", "1", "--channel-order", "rgb"]
    code, out, err = _run(capsys, photo, "--overlay", *overrides, *CPU)
    assert code == 0, err
    assert "note:" in err and "points_per_side is 1" in err and "RGB order" in err
    result = photo.with_name("rotated_deblurred.jpg")
    assert f"{photo} -> {result}" in err and out == ""
    with Image.open(result) as im:
        assert (im.format, im.size) == ("JPEG", (64, 48))  # orientation applied, not re-applied
        assert im.getexif().get(0x0112, 1) == 1
        assert im.info.get("icc_profile") == Image.open(photo).info["icc_profile"]
    with Image.open(result.with_name("rotated_deblurred_overlay.png")) as overlay:
        assert overlay.size == (64, 48)
    assert file_hashes([photo]) == before


def test_several_photos_to_a_folder_with_json_records(
    tiny_env: TinyEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = _photo(tmp_path / "a.jpg"), _photo(tmp_path / "b.png", "chelsea")
    code, out, err = _run(capsys, a, b, "-o", tmp_path / "out", "--json", *PLAIN)
    assert code == 0, err
    records = _records(out)
    assert [r["output"] for r in records] == [
        str(tmp_path / "out" / "a.jpg"),
        str(tmp_path / "out" / "b.png"),
    ]
    for record in records:
        assert record["status"] == "ok" and record["model"] == "nafnet-gopro"
        assert record["device"] == "cpu" and record["tile"] == "auto"
        assert set(record["seconds"]) == {"read", "deblur", "write"}  # type: ignore[arg-type]
        assert record["masks"] is None  # a plain model takes none
        assert Path(str(record["output"])).is_file()
    assert Image.open(tmp_path / "out" / "b.png").size == Image.open(b).size


def test_plain_model_never_needs_sam(
    tiny_env_factory: TinyEnvFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tiny_env_factory(imported=["nafnet-gopro"])  # SAM weights absent from the cache
    code, _, err = _run(capsys, _photo(tmp_path / "a.png"), *PLAIN)
    assert code == 0, err
    assert (tmp_path / "a_deblurred.png").is_file()


def test_existing_output_is_skipped_unless_overwrite(
    tiny_env: TinyEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photo = _photo(tmp_path / "a.png")
    result = tmp_path / "a_deblurred.png"
    result.write_bytes(b"kept")
    code, out, err = _run(capsys, photo, "--json", *PLAIN)
    assert code == 0 and _records(out)[0]["status"] == "skipped"
    assert result.read_bytes() == b"kept"
    code, out, err = _run(capsys, photo, "--overwrite", "--json", *PLAIN)
    assert code == 0 and _records(out)[0]["status"] == "ok", err
    assert Image.open(result).size == (64, 64)


def test_an_input_is_never_the_output(
    tiny_env: TinyEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photo = _photo(tmp_path / "a.png")
    before = file_hashes([photo])
    code, _, err = _run(capsys, photo, "-o", photo, "--overwrite", *PLAIN)
    assert code == 2 and "replace an input" in err
    assert file_hashes([photo]) == before


def _segmask(shape: tuple[int, int]) -> np.ndarray:
    segmask = np.zeros(shape, dtype=np.uint8)
    segmask[: shape[0] // 2] = 2
    segmask[:, : shape[1] // 3] = 6
    return segmask


def test_mask_files_skip_sam_for_map_and_cat(
    tiny_env_factory: TinyEnvFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sam_deblur_cli.masks.encode import labels_from_segmask
    from sam_deblur_cli.masks.formats import write_groups_npz, write_segmask_png

    tiny_env_factory(imported=["segnafnet-gopro", "masknafnet-gopro"])  # no SAM weights
    photo = _photo(tmp_path / "a.png")
    png = write_segmask_png(tmp_path / "a_mask.png", _segmask((64, 64)))
    npz = write_groups_npz(tmp_path / "a_groups.npz", labels_from_segmask(_segmask((64, 64))))
    for model, masks, name in [
        ("segnafnet-gopro", png, "map_png.png"),
        ("masknafnet-gopro", png, "cat_png.png"),
        ("segnafnet-gopro", npz, "map_npz.png"),
    ]:
        code, out, err = _run(
            capsys, photo, "-o", tmp_path / name, "-m", model, "--masks", masks, "--json", *NO_TLC
        )
        assert code == 0, err
        assert _records(out)[0]["groups"] == 3
    cat_npz = ["-o", tmp_path / "cat_npz.png", "-m", "masknafnet-gopro", "--masks", npz]
    code, _, err = _run(capsys, photo, *cat_npz, *NO_TLC)
    assert code == 1 and "segmask PNG" in err
    assert not (tmp_path / "cat_npz.png").exists()
    small = write_segmask_png(tmp_path / "small.png", _segmask((32, 32)))
    code, _, err = _run(capsys, photo, "-o", tmp_path / "bad.png", "--masks", small, *NO_TLC)
    assert code == 1 and "32" in err and not (tmp_path / "bad.png").exists()


def test_masks_for_a_model_without_masks_is_a_usage_error(
    tiny_env: TinyEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sam_deblur_cli.masks.formats import write_segmask_png

    png = write_segmask_png(tmp_path / "m.png", _segmask((64, 64)))
    code, _, err = _run(capsys, _photo(tmp_path / "a.png"), "--masks", png, *PLAIN)
    assert code == 2 and "takes no masks" in err
    assert not (tmp_path / "a_deblurred.png").exists()


def test_missing_weights_is_one_line_naming_the_command(
    tiny_env_factory: TinyEnvFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tiny_env_factory(imported=[SAM_NAME])
    photo = _photo(tmp_path / "a.png")
    code, out, err = _run(capsys, photo, *CPU)
    assert code == 2
    assert err.strip().count("\n") == 0, err
    assert "sam-deblur weights import segnafnet-gopro" in err
    assert "Traceback" not in err and out == ""
    assert sorted(p.name for p in tmp_path.glob("a*")) == ["a.png"]


def test_require_gpu_on_a_machine_without_one_exits_2(
    tiny_env: TinyEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    if torch.cuda.is_available() or torch.backends.mps.is_available():
        pytest.skip("this machine has a GPU")
    code, _, err = _run(capsys, _photo(tmp_path / "a.png"), "--require-gpu")
    assert code == 2
    assert "No GPU found" in err and "--require-gpu" in err and err.strip().count("\n") == 0
    assert not (tmp_path / "a_deblurred.png").exists()


def test_special_photos_keep_what_they_are(
    tiny_env: TinyEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import cv2

    photos = write_special_photos(tmp_path / "in")
    before = tree_hashes(tmp_path / "in")
    out_dir = tmp_path / "out"
    code, out, err = _run(capsys, *photos.values(), "-o", out_dir, "--json", *PLAIN)
    assert code == 0, err
    assert all(r["status"] == "ok" for r in _records(out))
    deep = cv2.imread(str(out_dir / "deep.png"), cv2.IMREAD_UNCHANGED)
    assert deep.dtype == np.uint16 and deep.shape == (48, 64, 3)
    assert np.count_nonzero(deep % 257)  # real 16-bit values, not 8-bit ones scaled up
    with Image.open(out_dir / "alpha.png") as im, Image.open(photos["rgba"]) as src:
        assert im.mode == "RGBA"
        np.testing.assert_array_equal(np.asarray(im)[:, :, 3], np.asarray(src)[:, :, 3])
    with Image.open(out_dir / "print.jpg") as im:
        assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (64, 48))
    with Image.open(out_dir / "gray.png") as im:
        assert im.mode == "L"
    assert tree_hashes(tmp_path / "in") == before


def test_broken_inputs_fail_alone_with_a_summary(
    tiny_env: TinyEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = write_broken_inputs(tmp_path / "broken")
    good = _photo(tmp_path / "good.png")
    inputs = [*broken.values(), good]
    before = file_hashes(inputs)
    code, out, err = _run(capsys, *inputs, "-o", tmp_path / "out", "--json", *PLAIN)
    assert code == 1
    records = {Path(str(r["input"])).name: r for r in _records(out)}
    assert records["good.png"]["status"] == "ok"
    failed = [name for name, r in records.items() if r["status"] == "failed"]
    assert len(failed) == len(broken) >= 10
    assert all(records[name]["error"] for name in failed)
    assert f"{len(broken)} of {len(inputs)} input(s) failed" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.png"]
    assert file_hashes(inputs) == before


def test_a_failure_mid_write_leaves_no_partial_file(
    tiny_env: TinyEnv,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def half_written(self: Image.Image, fp: object, *args: object, **kwargs: object) -> None:
        fp.write(b"\x89PNG half of it")  # type: ignore[attr-defined]
        raise OSError(28, "No space left on device")

    (tmp_path / "in").mkdir()
    photo = _photo(tmp_path / "in" / "a.png")
    monkeypatch.setattr(Image.Image, "save", half_written)
    code, _, err = _run(capsys, photo, "-o", tmp_path / "out" / "a.png", *PLAIN)
    assert code == 2 and "No space left" in err  # out of space stops the run (exit 2)
    leftovers = list((tmp_path / "out").rglob("*")) if (tmp_path / "out").exists() else []
    assert leftovers == []


@pytest.mark.subprocess
def test_console_script_runs_with_json(tiny_env: TinyEnv, tmp_path: Path) -> None:
    photo = _photo(tmp_path / "a.jpg")
    # Options before the image: still the default command; a plain model needs no tiny SAM.
    argv = ["--json", "-m", "nafnet-gopro", str(photo), "-o", str(tmp_path / "b.png")]
    run = subprocess.run(
        [str(console_script()), *argv],
        capture_output=True,
        text=True,
        env=tiny_env.subprocess_env(tiny_sam=False),
        check=False,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    (record,) = _records(run.stdout)
    assert record["status"] == "ok" and record["output"] == str(tmp_path / "b.png")
    assert "Traceback" not in run.stderr
    with Image.open(tmp_path / "b.png") as im:
        assert (im.format, im.size) == ("PNG", (64, 64))


def test_verbosity_tile_and_pixel_limit_options(
    tiny_env: TinyEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photo = _photo(tmp_path / "a.png")
    plain_auto = ["--model", "nafnet-gopro", "--no-tlc"]  # device auto: falls back, says so
    code, out, err = _run(
        capsys, photo, "-o", tmp_path / "v.png", "-v", "--json", "--tile", "0", *plain_auto
    )
    assert code == 0, err
    assert "running on the CPU" in err and "loaded nafnet-gopro" in err  # INFO shown with -v
    assert _records(out)[0]["tile"] is None
    code, out, err = _run(capsys, photo, "-o", tmp_path / "q.png", "-q", *plain_auto)
    assert code == 0 and out == "" and err == ""  # -q: errors only
    code, _, err = _run(capsys, photo, "-o", tmp_path / "t.png", "--tile", "big", *PLAIN)
    assert code == 2 and "tile" in err
    code, _, err = _run(capsys, photo, "-o", tmp_path / "m.png", "--max-pixels", "1000", *PLAIN)
    assert code == 1 and "--max-pixels" in err and not (tmp_path / "m.png").exists()
