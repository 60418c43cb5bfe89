"""`sam-deblur masks`: every format for a real photo, cache, failures, notes, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from skimage import data, transform
from tiny_sam import register_tiny_sam, write_tiny_sam_manifest

from sam_deblur_cli import weights
from sam_deblur_cli.cli import main
from sam_deblur_cli.masks import load_mask_file
from sam_deblur_cli.masks.encode import encode_segmask
from sam_deblur_cli.masks.formats import read_coco_json, read_mask_folder

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

TINY = ["--model", "segnafnet-tiny", "--stock", "--device", "cpu"]


@pytest.fixture
def tiny_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A test manifest whose tiny SAM is imported into this test's cache."""
    register_tiny_sam()
    manifest = write_tiny_sam_manifest(tmp_path / "models", points_per_side=2)
    monkeypatch.setenv("SAM_DEBLUR_WEIGHTS", str(manifest))
    monkeypatch.setenv("COLUMNS", "200")
    entry = weights.load_manifest().get("sam-tiny")
    weights.import_weights(entry, tmp_path / "models" / "sam_tiny.pth")
    return tmp_path


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    """skimage's astronaut, 96 x 128, as a PNG file."""
    small = transform.resize(data.astronaut(), (96, 128), anti_aliasing=True)
    path = tmp_path / "photos" / "astronaut.png"
    path.parent.mkdir()
    Image.fromarray(np.round(small * 255).astype(np.uint8)).save(path)
    return path


def records(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_every_format_is_written_for_a_real_photo_and_loads_back(
    tiny_env: Path, photo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tiny_env / "out"
    code = main(["masks", str(photo), "-o", str(out), "--format", "all", "--json", *TINY])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "note:" not in captured.err  # the run follows the model's recipe
    (record,) = records(captured.out)
    assert record["status"] == "ok" and record["cached"] is False
    assert sorted(p.name for p in out.iterdir()) == [
        "astronaut",
        "astronaut_groups.npz",
        "astronaut_masks.json",
        "astronaut_overlay.png",
        "astronaut_segmask.png",
    ]
    shape = (96, 128)
    segmask = load_mask_file(out / "astronaut_segmask.png", shape)
    groups = load_mask_file(out / "astronaut_groups.npz", shape)
    np.testing.assert_array_equal(groups.labels, segmask.labels)
    folder = read_mask_folder(out / "astronaut")
    coco = read_coco_json(out / "astronaut_masks.json")
    assert len(folder) == len(coco) == record["masks"] > 0
    assert folder.records == coco.records
    # Every format describes the same masks: re-encoding them gives the saved segmask.
    np.testing.assert_array_equal(encode_segmask(folder.iter_masks(), shape), segmask.segmask)
    np.testing.assert_array_equal(encode_segmask(coco.iter_masks(), shape), segmask.segmask)
    assert record["groups"] == segmask.groups
    with Image.open(out / "astronaut_overlay.png") as overlay:
        assert (overlay.mode, overlay.size) == ("RGB", (128, 96))


def test_a_second_run_reads_the_cache(
    tiny_env: Path, photo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["masks", str(photo), "-o", str(tiny_env / "out"), "--json", *TINY]
    assert main(args) == 0
    first = records(capsys.readouterr().out)[0]
    entry = weights.load_manifest().get("sam-tiny")
    weights.local_path(entry).unlink()  # SAM could not run any more
    assert main(args) == 0
    second = records(capsys.readouterr().out)[0]
    assert (first["cached"], second["cached"]) == (False, True)
    assert second["masks"] == first["masks"] and second["groups"] == first["groups"]
    # --no-cache must run SAM, which now fails for lack of weights: a set-up error.
    assert main([*args, "--no-cache"]) == 2
    assert "sam-tiny" in capsys.readouterr().err


def test_a_bad_input_fails_alone_with_one_line(
    tiny_env: Path, photo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = photo.parent / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    out = tiny_env / "out"
    code = main(["masks", str(broken), str(photo), "-o", str(out), *TINY])
    captured = capsys.readouterr()
    assert code == 1
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "broken.jpg" in errors[0]
    assert (out / "astronaut_segmask.png").is_file()
    assert not any(p.name.startswith("broken") for p in out.iterdir())
    assert "astronaut.png: " in captured.out


def test_inputs_sharing_a_stem_are_refused_before_any_work(
    tiny_env: Path, photo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tiny_env / "elsewhere" / "astronaut.jpg"
    other.parent.mkdir()
    Image.open(photo).convert("RGB").save(other)
    out = tiny_env / "out"
    assert main(["masks", str(photo), str(other), "-o", str(out), *TINY]) == 2
    assert "would both write astronaut_*" in capsys.readouterr().err
    assert not out.exists()


def test_overrides_print_a_departure_note(
    tiny_env: Path, photo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["masks", str(photo), "-o", str(tiny_env / "out"), *TINY]
    assert main([*args, "--channel-order", "rgb", "--pred-iou-thresh", "0.5"]) == 0
    err = capsys.readouterr().err
    assert "note:" in err
    assert "SAM sees the image in RGB order" in err
    assert "pred_iou_thresh is 0.5, but segnafnet-tiny was trained with 0.0" in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "nafnet-tiny"], "takes no masks"),
        (["--format", "segmask,tiff"], "Unknown mask format tiff"),
        (["--channel-order", "hsv"], "use bgr or rgb"),
        (["--sam", "no-such-sam"], "Unknown model 'no-such-sam'"),
    ],
)
def test_set_up_errors_exit_2_with_one_line(
    tiny_env: Path,
    photo: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    assert main(["masks", str(photo), "-o", str(tiny_env / "out"), *TINY, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.subprocess
def test_masks_help_does_not_import_torch() -> None:
    code = (
        "import sys; from sam_deblur_cli.cli import main; rc = main(['masks', '--help']);"
        "assert 'torch' not in sys.modules and 'numpy' not in sys.modules; sys.exit(rc)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert "STEM_segmask.png" in out.stdout
