"""Paired evaluation: dataset layout, pairing, summaries, reports, and a real end-to-end run."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam_deblur_cli.errors import UsageError
from sam_deblur_cli.evaluate import (
    Dataset,
    EvalResult,
    EvalSettings,
    ImageRow,
    Issue,
    evaluate,
    list_pairs,
    open_dataset,
    write_csv,
    write_json,
)


def _png(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return path


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_open_dataset_reads_the_upstream_layout(tmp_path: Path) -> None:
    for folder in ("input", "target", "input_mask"):
        (tmp_path / "GoPro" / folder).mkdir(parents=True)
    dataset = open_dataset(tmp_path / "GoPro")
    assert dataset.blurred == tmp_path / "GoPro" / "input"
    assert dataset.sharp == tmp_path / "GoPro" / "target"
    assert dataset.segmasks == tmp_path / "GoPro" / "input_mask"
    assert dataset.groups is None
    assert dataset.has_masks


def test_open_dataset_looks_into_test_and_accepts_two_folders(tmp_path: Path) -> None:
    for folder in ("input", "target"):
        (tmp_path / "REDS" / "test" / folder).mkdir(parents=True)
    dataset = open_dataset(tmp_path / "REDS")
    assert dataset.blurred == tmp_path / "REDS" / "test" / "input"
    assert not dataset.has_masks
    two = open_dataset(tmp_path / "REDS" / "test" / "input", tmp_path / "REDS" / "test" / "target")
    assert two == Dataset(dataset.blurred, dataset.sharp)


def test_open_dataset_refuses_what_is_not_a_dataset(tmp_path: Path) -> None:
    (tmp_path / "input").mkdir()
    with pytest.raises(UsageError, match="input/ and target/"):
        open_dataset(tmp_path)
    with pytest.raises(UsageError, match="not a folder"):
        open_dataset(tmp_path / "input", tmp_path / "missing")


def test_list_pairs_pairs_by_stem_and_reports_ambiguity(tmp_path: Path) -> None:
    root = tmp_path / "set"
    for name in ("a.png", "b.jpg", "c.png", "d.png", "d.jpg", ".hidden.png", "notes.txt"):
        _touch(root / "input" / name)
    for name in ("a.png", "b.PNG", "e.png", "d.png"):
        _touch(root / "target" / name)
    _touch(root / "input_mask" / "a.png")
    _touch(root / "grouped_masks" / "a.npz")
    _touch(root / "grouped_masks" / "b.npz")
    pairs, issues = list_pairs(open_dataset(root))
    by_name = {pair.name: pair for pair in pairs}
    assert sorted(by_name) == ["a", "b", "c", "e"]
    assert by_name["a"].mask == root / "input_mask" / "a.png"  # the segmask PNG wins
    assert by_name["b"].mask == root / "grouped_masks" / "b.npz"
    assert by_name["b"].sharp == root / "target" / "b.PNG"
    assert by_name["c"].sharp is None and by_name["e"].blurred is None
    assert [issue.name for issue in issues] == ["d"]
    assert "d.jpg and d.png" in issues[0].reason or "d.png and d.jpg" in issues[0].reason


def _result() -> EvalResult:
    rows = [
        ImageRow("x", "m1", 30.0, 0.90, 28.0, False),
        ImageRow("y", "m1", 20.0, 0.70, 25.0, True),
        ImageRow("z", "m1", math.inf, 1.0, 26.0, False),
        ImageRow("x", "m2", 27.0, 0.80, 28.0, False),
    ]
    issues = [Issue("y", "m2", "mask file unreadable"), Issue("z", "m2", "mask file unreadable")]
    return EvalResult(["m1", "m2"], pairs=3, rows=rows, issues=issues, tlc={"m1": True})


def test_summaries_are_the_papers_means() -> None:
    m1, m2 = _result().summaries()
    assert m1.psnr == pytest.approx(25.0)  # the identical output is left out of the mean
    assert m1.identical == 1
    assert m1.ssim == pytest.approx((0.90 + 0.70 + 1.0) / 3)
    assert m1.mcr == pytest.approx(1 / 3)
    assert (m1.count, m1.skipped, m1.tlc) == (3, 0, True)
    assert (m2.count, m2.skipped, m2.tlc) == (1, 2, None)
    assert m2.psnr == pytest.approx(27.0) and m2.mcr == 0.0
    assert not _result().complete


def test_empty_model_summary_is_nan() -> None:
    (summary,) = EvalResult(["m"], pairs=2).summaries()
    assert summary.count == 0 and summary.skipped == 2
    assert math.isnan(summary.psnr) and math.isnan(summary.ssim) and math.isnan(summary.mcr)


def test_reports_hold_every_row_and_stay_valid_json(tmp_path: Path) -> None:
    result = _result()
    write_csv(result, tmp_path / "out" / "rows.csv")
    write_json(result, tmp_path / "out" / "rows.json")
    with (tmp_path / "out" / "rows.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["name"], r["model"]) for r in rows] == [
        ("x", "m1"),
        ("y", "m1"),
        ("z", "m1"),
        ("x", "m2"),
    ]
    assert rows[2]["psnr"] == "inf" and rows[1]["collapsed"] == "True"
    record = json.loads((tmp_path / "out" / "rows.json").read_text())  # strict: no Infinity
    assert record["images"][2]["psnr"] is None
    assert record["models"][0]["model"] == "m1" and record["models"][0]["identical"] == 1
    assert record["issues"][0] == {"name": "y", "model": "m2", "reason": "mask file unreadable"}
    assert not list((tmp_path / "out").glob(".*.tmp"))


def test_unwritable_report_is_a_usage_error(tmp_path: Path) -> None:
    blocker = _touch(tmp_path / "file")
    with pytest.raises(UsageError, match="Could not write"):
        write_csv(_result(), blocker / "rows.csv")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (EvalSettings(models=()), "at least one --model"),
        (EvalSettings(models=("a", "b", "a")), "more than once"),
        (EvalSettings(limit=0), "--limit"),
        (EvalSettings(masks_from="dataset"), "--masks-from sam"),
    ],
)
def test_bad_settings_are_refused_before_any_work(
    tmp_path: Path, settings: EvalSettings, message: str
) -> None:
    dataset = Dataset(tmp_path, tmp_path)
    with pytest.raises(UsageError, match=message):
        evaluate(dataset, settings)
