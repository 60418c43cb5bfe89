"""`sam-deblur eval`: options, exit codes and output, driven through the real CLI."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_models import TinyEnv, TinyEnvFactory

from sam_deblur_cli.cli import main


@pytest.mark.subprocess
def test_eval_help_does_not_import_torch() -> None:
    code = (
        "import sys; from sam_deblur_cli.cli import main; rc = main(['eval', '--help']);"
        "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert "--masks-from" in out.stdout and "--tlc" in out.stdout


def test_a_folder_that_is_not_a_dataset_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["eval", str(tmp_path)]) == 2
    assert "input/ and target/" in capsys.readouterr().err


def test_a_bad_tile_size_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for folder in ("input", "target"):
        (tmp_path / folder).mkdir()
    assert main(["eval", str(tmp_path), "--tile", "big"]) == 2
    assert "tile size" in capsys.readouterr().err.lower()


def test_an_unknown_ssim_variant_is_a_usage_error(tmp_path: Path) -> None:
    assert main(["eval", str(tmp_path), "--ssim", "4d"]) == 2


def _png(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)


def _dataset(root: Path, *, with_orphan: bool) -> Path:
    """Two blurred/sharp pairs with segmask PNGs; optionally a blurred image with no partner."""
    from skimage import data

    photos = {"astronaut": data.astronaut()[:48, :64], "coffee": data.coffee()[:48, :64]}
    if with_orphan:
        _png(root / "input" / "rocket.png", data.rocket()[:48, :64])
    segmask = np.zeros((48, 64), dtype=np.uint8)
    segmask[24:] = 2
    for name, sharp in photos.items():
        _png(root / "input" / f"{name}.png", np.roll(sharp, 3, axis=1))  # a small misalignment
        _png(root / "target" / f"{name}.png", sharp)
        _png(root / "input_mask" / f"{name}.png", segmask)
    return root


def test_eval_prints_the_table_writes_reports_and_exits_1_on_a_skip(
    tiny_env: TinyEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _dataset(tmp_path / "set", with_orphan=True)
    csv_path, json_path = tmp_path / "r" / "rows.csv", tmp_path / "r" / "rows.json"
    argv = ["eval", str(root), "-m", "segnafnet-gopro", "-m", "nafnet-gopro", "--device", "cpu"]
    code = main([*argv, "--no-tlc", "--csv", str(csv_path), "--json", str(json_path)])
    out, err = capsys.readouterr()

    assert code == 1
    table = [line for line in out.splitlines() if "gopro" in line]
    assert len(table) == 2
    assert "segnafnet-gopro" in table[0] and "nafnet-gopro" in table[1]
    assert all(" off " in line and " 1 " in line for line in table)  # TLC off, 1 skipped
    assert "rocket" in err and "No sharp image" in err
    assert "masks from the dataset's mask files" in " ".join(out.split())  # caption, wrapped
    rows = list(csv.DictReader(csv_path.open(newline="")))
    assert {(r["name"], r["model"]) for r in rows} == {
        (name, model)
        for name in ("astronaut", "coffee")
        for model in ("segnafnet-gopro", "nafnet-gopro")
    }
    report = json.loads(json_path.read_text())
    assert [(m["model"], m["count"], m["skipped"]) for m in report["models"]] == [
        ("segnafnet-gopro", 2, 1),
        ("nafnet-gopro", 2, 1),
    ]
    for line, summary in zip(table, report["models"], strict=True):
        psnrs = [float(r["psnr"]) for r in rows if r["model"] == summary["model"]]
        assert summary["psnr"] == pytest.approx(sum(psnrs) / 2)
        assert f" {summary['psnr']:.2f} " in line and f" {summary['ssim']:.3f} " in line


def test_eval_of_a_complete_set_exits_0(
    tiny_env: TinyEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _dataset(tmp_path / "set", with_orphan=False)
    argv = ["eval", str(root / "input"), str(root / "target"), "-m", "nafnet-gopro", "--no-tlc"]
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    (row,) = [line for line in out.splitlines() if "nafnet-gopro" in line]
    assert " 2 " in row and " 0 " in row  # two images, none skipped
    assert "3-D SSIM" in out and "masks from" not in out  # no model here takes masks
    assert "skipped" not in err


def test_missing_weights_exit_2_before_any_image(
    tiny_env_factory: TinyEnvFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tiny_env_factory(imported=())
    root = _dataset(tmp_path / "set", with_orphan=False)
    assert main(["eval", str(root), "-m", "nafnet-gopro", "--device", "cpu"]) == 2
    assert "weights import" in capsys.readouterr().err


def test_an_unwritable_report_exits_2_before_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for folder in ("input", "target"):
        (tmp_path / folder).mkdir()
    blocker = tmp_path / "file"
    blocker.write_text("")
    # no weights exist in this test's cache: reaching the models would fail differently
    assert main(["eval", str(tmp_path), "--json", str(blocker / "r.json")]) == 2
    assert "Cannot write into" in capsys.readouterr().err


def test_json_prints_the_report_that_json_out_writes(
    tiny_env: TinyEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _dataset(tmp_path / "set", with_orphan=True)
    report = tmp_path / "report.json"
    argv = ["eval", "--json", str(root), "-m", "nafnet-gopro", "--no-tlc", "-d", "cpu"]
    code = main([*argv, "--json-out", str(report)])
    out, err = capsys.readouterr()
    assert code == 1  # the orphan is skipped, as without --json
    (line,) = out.splitlines()  # one JSON line and no table
    assert json.loads(line) == json.loads(report.read_text())
    assert json.loads(line)["models"][0]["count"] == 2
    assert "rocket" in err and "No sharp image" in err
