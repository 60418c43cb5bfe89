"""Paired evaluation: dataset layout, pairing, summaries, reports, and a real end-to-end run."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from tiny_models import TinyEnv

from sam_deblur_cli import metrics
from sam_deblur_cli.amg import RecipeOverrides
from sam_deblur_cli.datasets import Dataset, Issue, list_pairs, open_dataset
from sam_deblur_cli.errors import UsageError
from sam_deblur_cli.evaluate import (
    EvalResult,
    EvalSettings,
    ImageRow,
    Protocol,
    check_writable,
    evaluate,
    resolve_protocol,
    write_csv,
    write_json,
)
from sam_deblur_cli.nets import MASK_VALUE_UPSTREAM


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
    return EvalResult(
        ["m1", "m2"], pairs=3, rows=rows, issues=issues, tlc={"m1": True}, masks_from="sam"
    )


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
    assert record["settings"] == {"ssim": "3d", "masks_from": "sam"}
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


# --------------------------------------------------------------------------- end to end

MAP_AND_CAT = ("segnafnet-gopro", "masknafnet-gopro")  # one recipe, so one SAM run per image
ALL_THREE = (*MAP_AND_CAT, "nafnet-gopro")


def _box_blur(sharp: np.ndarray, width: int = 9) -> np.ndarray:
    """Horizontal ``width``-px box kernel (a known linear motion blur), edges replicated."""
    half = width // 2
    padded = np.pad(sharp.astype(np.float64), ((0, 0), (half, half), (0, 0)), mode="edge")
    out = sum(padded[:, k : k + sharp.shape[1]] for k in range(width)) / width
    return np.rint(out).astype(np.uint8)


def _photos() -> dict[str, np.ndarray]:
    from skimage import data

    return {
        "astronaut": data.astronaut()[60:108, 180:244],
        "chelsea": data.chelsea()[80:128, 150:214],
    }


def _write_pairs(root: Path) -> None:
    for name, sharp in _photos().items():
        _png(root / "input" / f"{name}.png", _box_blur(sharp))
        _png(root / "target" / f"{name}.png", sharp)


@pytest.fixture
def paired(tmp_path: Path) -> Path:
    """Two good pairs, one blurred image without its sharp one, one size mismatch."""
    from skimage import data

    root = tmp_path / "paired"
    _write_pairs(root)
    _png(root / "input" / "rocket.png", _box_blur(data.rocket()[:48, :64]))
    odd = data.rocket()[100:148, 100:164]
    _png(root / "input" / "odd.png", _box_blur(odd))
    _png(root / "target" / "odd.png", odd[:40])
    return root


def _count_mask_runs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """Record every SAM mask computation while still running the real one."""
    from sam_deblur_cli.pipeline import Deblurrer

    calls: list[tuple[int, ...]] = []
    real = Deblurrer.compute_masks

    def counting(self: Deblurrer, rgb_uint8: np.ndarray) -> Any:
        calls.append(rgb_uint8.shape)
        return real(self, rgb_uint8)

    monkeypatch.setattr(Deblurrer, "compute_masks", counting)
    return calls


def _count_sam_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every SAM model built (one per MaskGenerator) while still building it."""
    from sam_deblur_cli.masks import MaskGenerator

    loads: list[str] = []
    real = MaskGenerator.__init__

    def counting(self: MaskGenerator, sam_entry_name: str, *args: Any, **kwargs: Any) -> None:
        loads.append(sam_entry_name)
        real(self, sam_entry_name, *args, **kwargs)

    monkeypatch.setattr(MaskGenerator, "__init__", counting)
    return loads


def test_models_share_one_sam_run_per_image_and_problems_are_counted(
    tiny_env: TinyEnv, paired: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _count_mask_runs(monkeypatch)
    loads = _count_sam_loads(monkeypatch)
    progress: list[tuple[int, int, str]] = []
    settings = EvalSettings(models=MAP_AND_CAT, device="cpu", save_dir=tmp_path / "saved")
    result = evaluate(open_dataset(paired), settings, progress=lambda *args: progress.append(args))

    # map and cat share the recipe: SAM ran once per evaluated image, not once per model
    assert calls == [(48, 64, 3)] * 2
    assert loads == ["sam-vit-h"]  # and SAM was built once for both models
    assert result.masks_from == "sam"
    assert [s.model for s in result.summaries()] == list(MAP_AND_CAT)
    for summary in result.summaries():
        assert (summary.count, summary.skipped, summary.tlc) == (2, 2, True)
        assert -1.0 < summary.ssim < 1.0 and math.isfinite(summary.psnr)
    reasons = {issue.name: issue.reason for issue in result.issues}
    assert set(reasons) == {"odd", "rocket"}
    assert all(issue.model is None for issue in result.issues)
    assert "No sharp image" in reasons["rocket"]
    assert "64 x 48" in reasons["odd"] and "64 x 40" in reasons["odd"]
    assert not result.complete
    names = ["astronaut", "chelsea", "odd", "rocket"]
    assert progress == [(i, 4, name) for i, name in enumerate(names, start=1)]

    photos = _photos()
    for row in result.rows:
        sharp = photos[row.name]
        assert row.psnr_input == pytest.approx(metrics.psnr(_box_blur(sharp), sharp))
        saved = np.asarray(Image.open(tmp_path / "saved" / row.model / f"{row.name}.png"))
        assert metrics.psnr(saved, sharp) == pytest.approx(row.psnr)  # saved = measured pixels
        assert metrics.ssim_3d(saved, sharp) == pytest.approx(row.ssim)
        assert row.collapsed == (row.psnr_input - row.psnr > 3.0)


def test_dataset_masks_replace_sam_and_bad_ones_skip_only_mask_models(
    tiny_env: TinyEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _count_mask_runs(monkeypatch)
    loads = _count_sam_loads(monkeypatch)
    root = tmp_path / "withmasks"
    _write_pairs(root)
    _png(root / "target" / "coffee.png", _photos()["chelsea"])  # a pair with no mask file
    _png(root / "input" / "coffee.png", _box_blur(_photos()["chelsea"]))
    segmask = np.zeros((48, 64), dtype=np.uint8)
    segmask[:, 32:] = 2  # two groups, as SAM's first mask (weight 2) would make them
    _png(root / "input_mask" / "astronaut.png", segmask)
    groups = np.stack([segmask == 0, segmask == 2])[:, None]  # upstream: M x 1 x H x W bool
    (root / "grouped_masks").mkdir()
    np.savez(root / "grouped_masks" / "chelsea.npz", masks=groups)

    settings = EvalSettings(models=ALL_THREE, device="cpu", tlc=False)  # TLC is not the point
    result = evaluate(open_dataset(root), settings)

    assert calls == [] and loads == []  # auto: the dataset has masks, so SAM never ran
    assert result.masks_from == "dataset"
    evaluated = {(row.name, row.model) for row in result.rows}
    assert evaluated == {
        *(("astronaut", model) for model in ALL_THREE),
        ("chelsea", "segnafnet-gopro"),  # MAP takes the groups .npz
        ("chelsea", "nafnet-gopro"),
        ("coffee", "nafnet-gopro"),
    }
    problems = {(issue.name, issue.model): issue.reason for issue in result.issues}
    assert set(problems) == {
        ("chelsea", "masknafnet-gopro"),  # CAT needs the segmask's gray values
        ("coffee", "segnafnet-gopro"),
        ("coffee", "masknafnet-gopro"),
    }
    assert "segmask" in problems["chelsea", "masknafnet-gopro"]
    assert "--masks-from sam" in problems["coffee", "segnafnet-gopro"]
    counts = {s.model: (s.count, s.skipped) for s in result.summaries()}
    assert counts == {"segnafnet-gopro": (2, 1), "masknafnet-gopro": (1, 2), "nafnet-gopro": (3, 0)}


def test_rows_match_running_the_model_directly(tiny_env: TinyEnv, tmp_path: Path) -> None:
    from sam_deblur_cli.pipeline import Deblurrer, DeblurSettings

    root = tmp_path / "direct"
    _write_pairs(root)
    result = evaluate(
        open_dataset(root), EvalSettings(models=("nafnet-gopro",), device="cpu", tlc=False)
    )
    assert result.complete and result.tlc == {"nafnet-gopro": False}
    assert result.masks_from is None  # a plain model takes no masks
    model = Deblurrer(
        DeblurSettings(recipe=RecipeOverrides(model="nafnet-gopro"), device="cpu", tlc=False)
    )
    for row in result.rows:
        sharp = _photos()[row.name]
        restored = metrics.to_uint8(model.deblur(_box_blur(sharp).astype(np.float32) / 255))
        assert row.psnr == pytest.approx(metrics.psnr(restored, sharp), abs=1e-9)
        assert row.ssim == pytest.approx(metrics.ssim_3d(restored, sharp), abs=1e-12)


def test_limit_takes_the_first_names_and_a_failed_save_keeps_the_row(
    tiny_env: TinyEnv, paired: Path, tmp_path: Path
) -> None:
    saved = tmp_path / "saved"
    (saved / "nafnet-gopro" / "chelsea.png").mkdir(parents=True)  # a folder in the file's way
    settings = EvalSettings(
        models=("nafnet-gopro",), device="cpu", tlc=False, limit=2, save_dir=saved
    )
    result = evaluate(open_dataset(paired), settings)
    assert result.pairs == 2
    assert [row.name for row in result.rows] == ["astronaut", "chelsea"]  # measured anyway
    assert (saved / "nafnet-gopro" / "astronaut.png").is_file()
    ((name, model, reason),) = [(i.name, i.model, i.reason) for i in result.issues]
    assert (name, model) == ("chelsea", "nafnet-gopro") and "chelsea.png" in reason
    (summary,) = result.summaries()
    assert (summary.count, summary.skipped) == (2, 0)


def test_unwritable_places_are_refused_before_the_run(tmp_path: Path) -> None:
    blocker = _touch(tmp_path / "file")
    with pytest.raises(UsageError, match="Cannot write"):
        check_writable(blocker / "rows.csv")
    with pytest.raises(UsageError, match="is a folder"):
        check_writable(tmp_path)
    with pytest.raises(UsageError, match="Cannot write"):
        evaluate(Dataset(tmp_path, tmp_path), EvalSettings(save_dir=blocker / "out"))
    check_writable(tmp_path / "new" / "rows.json")
    assert (tmp_path / "new").is_dir() and not list((tmp_path / "new").iterdir())


# --------------------------------------------------------------------------- the protocol


def test_eval_resolves_to_the_papers_protocol_on_a_gpu_where_deblur_would_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a (simulated) bf16-capable GPU: eval runs fp32, TF32 off, whole images."""
    from sam_deblur_cli import devices
    from sam_deblur_cli.pipeline import DeblurSettings

    monkeypatch.setattr(devices, "_cuda_count", lambda: 1)
    monkeypatch.setattr(devices, "_cuda_bf16", lambda device: True)
    protocol = resolve_protocol(EvalSettings())
    assert protocol == Protocol(device="cuda:0", precision="fp32", tf32=False, tile=None)
    assert protocol.is_papers
    assert protocol.describe() == "fp32, TF32 off, whole images, on cuda:0"
    photo = DeblurSettings()  # the photo command's defaults favour speed on the same GPU
    assert devices.resolve(photo.device, photo.precision).precision == "bf16"
    assert photo.tile == "auto"
    asked = resolve_protocol(EvalSettings(precision="bf16", tile="auto", tf32=True))
    assert (asked.precision, asked.tile, asked.tf32) == ("bf16", "auto", True)
    assert not asked.is_papers


def test_reports_state_the_protocol_and_mask_value(tiny_env: TinyEnv, paired: Path) -> None:
    result = evaluate(open_dataset(paired), EvalSettings(models=ALL_THREE, device="cpu", tlc=False))
    assert result.protocol == Protocol(device="cpu", precision="fp32", tf32=False, tile=None)
    assert result.mask_values == {"segnafnet-gopro": MASK_VALUE_UPSTREAM}  # the entry's default
    assert [s.mask_value for s in result.summaries()] == ["1/255", None, None]
    out = paired.parent / "reports"
    write_csv(result, out / "rows.csv")
    write_json(result, out / "rows.json")
    record = json.loads((out / "rows.json").read_text())
    assert record["protocol"] == {
        "device": "cpu", "precision": "fp32", "tf32": False, "tile": None, "papers": True,
    }  # fmt: skip
    assert {m["model"]: m["mask_value"] for m in record["models"]} == {
        "segnafnet-gopro": "1/255", "masknafnet-gopro": None, "nafnet-gopro": None,
    }  # fmt: skip
    rows = list(csv.DictReader((out / "rows.csv").open(newline="")))
    first = next(r for r in rows if r["model"] == "segnafnet-gopro")
    assert {k: first[k] for k in ("tlc", "mask_value", "precision", "tf32", "tile")} == {
        "tlc": "False", "mask_value": "1/255", "precision": "fp32", "tf32": "False", "tile": "",
    }  # fmt: skip
    assert first["masks_from"] == "sam" and first["ssim_variant"] == "3d"


def test_mask_value_override_reaches_map_models_only(tiny_env: TinyEnv, paired: Path) -> None:
    base = EvalSettings(models=("segnafnet-gopro", "nafnet-gopro"), device="cpu", tlc=False)
    default = evaluate(open_dataset(paired), base)
    ones = evaluate(open_dataset(paired), replace(base, mask_value=1.0))
    assert ones.mask_values == {"segnafnet-gopro": 1.0}
    psnr = {(r.name, r.model): r.psnr for r in default.rows}
    changed = [r.psnr != psnr[r.name, r.model] for r in ones.rows if r.model == "segnafnet-gopro"]
    unchanged = [r.psnr == psnr[r.name, r.model] for r in ones.rows if r.model == "nafnet-gopro"]
    assert all(changed) and changed and all(unchanged) and unchanged
    with pytest.raises(UsageError, match="MAP models only"):
        evaluate(open_dataset(paired), replace(base, models=("nafnet-gopro",), mask_value=1.0))


def test_an_image_that_does_not_fit_is_skipped_not_tiled(
    tiny_env: TinyEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whole images by default: out of memory skips the pair; tiling only when asked."""
    import torch

    from sam_deblur_cli import pipeline

    sizes: list[tuple[int, ...]] = []
    real_load = pipeline.Deblurrer._load_network

    def small_memory(self: pipeline.Deblurrer, checkpoint: Path) -> Any:
        net = real_load(self, checkpoint)
        real_forward = net.forward

        def forward(image: torch.Tensor, guide: Any = None) -> torch.Tensor:
            sizes.append(tuple(image.shape[-2:]))
            if image.shape[-1] * image.shape[-2] > 40 * 40:
                raise torch.OutOfMemoryError("simulated: CUDA out of memory")
            return real_forward(image, guide)

        net.forward = forward
        return net

    monkeypatch.setattr(pipeline.Deblurrer, "_load_network", small_memory)
    _write_pairs(tmp_path / "set")
    base = EvalSettings(models=("nafnet-gopro",), device="cpu", tlc=False)
    result = evaluate(open_dataset(tmp_path / "set"), base)
    assert result.rows == [] and len(result.issues) == result.pairs == 2
    assert all("does not fit in memory" in issue.reason for issue in result.issues)
    assert set(sizes) == {(48, 64)}  # never a tile
