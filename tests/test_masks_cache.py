"""masks/cache.py: what the key depends on, round trips, damaged entries, unwritable caches."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sam_deblur_cli.masks.cache import MaskCache, cache_key
from sam_deblur_cli.masks.encode import encode_segmask, labels_from_segmask

RGB = np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8)
BASE: dict[str, Any] = {
    "sam_name": "sam-vit-h",
    "sam_sha256": "a" * 64,
    "channel_order": "bgr",
    "amg": {"points_per_side": 32},
    "generator": "fast",
}


def a_segmask(shape: tuple[int, int] = (12, 16)) -> np.ndarray:
    rng = np.random.default_rng(1)
    return encode_segmask((rng.random(shape) < 0.3 for _ in range(9)), shape)


def test_the_key_is_stable_and_ignores_memory_layout() -> None:
    fortran = np.asfortranarray(RGB)
    assert cache_key(RGB, **BASE) == cache_key(RGB.copy(), **BASE) == cache_key(fortran, **BASE)


@pytest.mark.parametrize(
    "change",
    [
        {"sam_name": "sam-vit-b"},
        {"sam_sha256": "b" * 64},
        {"channel_order": "rgb"},
        {"amg": {"points_per_side": 16}},
        {"amg": {"points_per_side": 32, "pred_iou_thresh": 0.5}},
        {"generator": "stock"},
    ],
)
def test_everything_that_shapes_the_masks_changes_the_key(change: dict[str, Any]) -> None:
    assert cache_key(RGB, **{**BASE, **change}) != cache_key(RGB, **BASE)


def test_pixels_and_shape_change_the_key_but_spelled_out_defaults_do_not() -> None:
    other = RGB.copy()
    other[0, 0, 0] ^= 1
    assert cache_key(other, **BASE) != cache_key(RGB, **BASE)
    same_bytes = RGB.reshape(16, 12, 3)
    assert cache_key(same_bytes, **BASE) != cache_key(RGB, **BASE)
    spelled = {**BASE, "amg": {"points_per_side": 32, "box_nms_thresh": 0.7}}
    assert cache_key(RGB, **spelled) == cache_key(RGB, **BASE)


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({}, "fed3b32581515e74d42ce43b0b3813654d136fa707e56c7e1777ddb6ea22c5c3"),
        (
            {"amg": {}, "generator": "stock"},
            "7f15c800eeb0b47acec30b406ff2fcb46dc46bef0038a1b4958b3e349d46b0ac",
        ),
        (
            {"amg": {"crop_overlap_ratio": 0.25, "pred_iou_thresh": 1}},
            "a242476ca128268decdd09acc557e3c49690deeacec7ff3250a61f3437ac7f11",
        ),
    ],
)
def test_keys_are_those_of_existing_caches(change: dict[str, Any], key: str) -> None:
    """Keys written by earlier versions (defaults filled in from the parameter table) still hit."""
    assert cache_key(RGB, **{**BASE, **change}) == key


def test_put_then_get_gives_the_segmask_its_groups_and_count(tmp_path: Path) -> None:
    cache = MaskCache(tmp_path)
    segmask = a_segmask()
    key = cache_key(RGB, **BASE)
    assert cache.get(key, (12, 16)) is None
    cache.put(key, segmask, count=9)
    hit = cache.get(key, (12, 16))
    assert hit is not None
    np.testing.assert_array_equal(hit.segmask, segmask)
    np.testing.assert_array_equal(hit.labels, labels_from_segmask(segmask))
    assert (hit.count, hit.maskset) == (9, None)
    assert sorted(p.suffix for p in tmp_path.rglob("*") if p.is_file()) == [".json", ".png"]


def test_the_default_root_is_under_the_cache_home() -> None:
    assert MaskCache().root == Path(os.environ["SAM_DEBLUR_HOME"]) / "masks"


@pytest.mark.parametrize("damage", ["json", "png", "missing-png", "shape"])
def test_a_damaged_entry_is_ignored_removed_and_rewritten(tmp_path: Path, damage: str) -> None:
    cache = MaskCache(tmp_path)
    key = cache_key(RGB, **BASE)
    cache.put(key, a_segmask(), count=9)
    png, meta = next(tmp_path.rglob("*.png")), next(tmp_path.rglob("*.json"))
    if damage == "json":
        meta.write_text("{not json")
    elif damage == "png":
        png.write_bytes(png.read_bytes()[:40])
    elif damage == "missing-png":
        png.unlink()
    else:
        cache.put(key, a_segmask((16, 12)), count=9)  # stored for another size
    assert cache.get(key, (12, 16)) is None
    assert not meta.exists()
    cache.put(key, a_segmask(), count=4)
    hit = cache.get(key, (12, 16))
    assert hit is not None and hit.count == 4


def test_an_unwritable_cache_only_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    cache = MaskCache(blocker)
    key = cache_key(RGB, **BASE)
    cache.put(key, a_segmask(), count=1)
    assert "could not write the mask cache entry" in caplog.text
    assert cache.get(key, (12, 16)) is None
