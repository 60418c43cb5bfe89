"""amg.py: the generator parameter table against segment_anything's own signature,
and the places that derive from it (manifest keys, defaults, the generators' settings)."""

from __future__ import annotations

import dataclasses
import inspect
import typing
from pathlib import Path

import pytest
from segment_anything import SamAutomaticMaskGenerator
from tiny_sam import write_tiny_sam_manifest

from sam_deblur_cli import amg, weights
from sam_deblur_cli.errors import SetupError, UsageError

STOCK = inspect.signature(SamAutomaticMaskGenerator.__init__).parameters
# What the stock generator takes that no recipe sets: the model and how results come back.
NOT_RECIPE = {"self", "model", "point_grids", "output_mode"}


def test_the_table_names_every_stock_keyword_argument_in_its_order() -> None:
    assert set(STOCK) - amg.AMG_KEYS == NOT_RECIPE
    assert set(STOCK) >= amg.AMG_KEYS
    assert list(amg.AMG_DEFAULTS) == [name for name in STOCK if name not in NOT_RECIPE]


def test_defaults_and_types_are_the_stock_generators() -> None:
    ours = typing.get_type_hints(amg.AmgParams)
    for field in dataclasses.fields(amg.AmgParams):
        stock = STOCK[field.name]
        assert field.default == stock.default, field.name
        assert type(field.default) is type(stock.default), field.name  # 1.0 stays a float
        assert ours[field.name] == stock.annotation, field.name
    assert amg.AmgParams().as_kwargs() == amg.AMG_DEFAULTS


def test_effective_amg_fills_defaults_keeps_values_as_given_and_rejects_unknown_names() -> None:
    effective = amg.effective_amg({"pred_iou_thresh": 1, "points_per_side": 8})
    assert effective == {**amg.AMG_DEFAULTS, "pred_iou_thresh": 1, "points_per_side": 8}
    assert type(effective["pred_iou_thresh"]) is int  # the cache key sees what the recipe says
    assert amg.amg_params({"points_per_side": 8}) == amg.AmgParams(points_per_side=8)
    with pytest.raises(UsageError, match=r"Unknown mask generator parameter.*point_grids"):
        amg.amg_params({"point_grids": 1})


def _manifest_with_amg(folder: Path, lines: str) -> Path:
    path = write_tiny_sam_manifest(folder)
    text = path.read_text()
    assert "[recipes.tiny.amg]\n" in text
    path.write_text(text.replace("[recipes.tiny.amg]\n", f"[recipes.tiny.amg]\n{lines}\n"))
    return path


def test_a_manifest_recipe_may_set_exactly_the_tables_parameters(tmp_path: Path) -> None:
    in_tiny = {"points_per_side", "pred_iou_thresh", "stability_score_thresh"}  # set already
    given = {k: v for k, v in amg.AMG_DEFAULTS.items() if k not in in_tiny}
    path = _manifest_with_amg(tmp_path / "ok", "\n".join(f"{k} = {v!r}" for k, v in given.items()))
    tiny = weights.load_manifest(path).get("segnafnet-tiny").recipe
    assert tiny is not None
    given_amg = tiny.amg
    assert set(given_amg) == amg.AMG_KEYS
    assert {k: given_amg[k] for k in given} == given
    with pytest.raises(SetupError, match=r"unknown key\(s\) output_mode"):
        weights.load_manifest(_manifest_with_amg(tmp_path / "bad", "output_mode = 1"))
