"""masks/sam.py and MaskGenerator with a tiny random-weight SAM behind a test manifest."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from segment_anything import SamAutomaticMaskGenerator
from skimage import data, transform
from tiny_sam import build_tiny_sam, register_tiny_sam, write_tiny_sam_manifest

from sam_deblur_cli import weights
from sam_deblur_cli.errors import UsageError, WeightsNotFoundError
from sam_deblur_cli.masks import MaskGenerator, sam
from sam_deblur_cli.masks.encode import encode_segmask


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """skimage's astronaut, 96 x 128 (H x W), RGB uint8."""
    small = transform.resize(data.astronaut(), (96, 128), anti_aliasing=True)
    return np.round(small * 255).astype(np.uint8)


@pytest.fixture
def manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> weights.Manifest:
    """The tiny SAM imported into this test's cache, and its manifest in force."""
    register_tiny_sam()
    path = write_tiny_sam_manifest(tmp_path / "models")
    monkeypatch.setenv("SAM_DEBLUR_WEIGHTS", str(path))
    loaded = weights.load_manifest()
    weights.import_weights(loaded.get("sam-tiny"), tmp_path / "models" / "sam_tiny.pth")
    return loaded


def trained_recipe(manifest: weights.Manifest) -> weights.Recipe:
    recipe = manifest.get("segnafnet-tiny").recipe
    assert recipe is not None
    return recipe


def recipe_of(manifest: weights.Manifest, **overrides: Any) -> weights.Recipe:
    return sam.override_recipe(trained_recipe(manifest), **overrides)


@pytest.fixture
def sam_inputs(monkeypatch: pytest.MonkeyPatch) -> list[np.ndarray]:
    """Every image the real generators are handed, recorded on its way in."""
    seen: list[np.ndarray] = []
    real = sam.make_generator

    def recording(*args: Any, **kwargs: Any) -> Callable[[np.ndarray], Any]:
        run = real(*args, **kwargs)

        def spy(image: np.ndarray) -> Any:
            seen.append(image.copy())
            return run(image)

        return spy

    monkeypatch.setattr(sam, "make_generator", recording)
    return seen


def test_load_sam_loads_the_checkpoint_strictly_through_our_reader(
    manifest: weights.Manifest,
) -> None:
    model = sam.load_sam(manifest.get("sam-tiny"))
    assert not model.training
    reference = build_tiny_sam(0).state_dict()
    loaded = model.state_dict()
    assert loaded.keys() == reference.keys()
    for key, value in reference.items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0, msg=key)


def test_load_sam_refuses_a_deblur_entry(manifest: weights.Manifest) -> None:
    with pytest.raises(UsageError, match="not a Segment Anything model"):
        sam.load_sam(manifest.get("segnafnet-tiny"))


def test_stock_path_runs_end_to_end_on_a_real_photo(
    manifest: weights.Manifest, photo: np.ndarray
) -> None:
    recipe = recipe_of(manifest)
    generate = MaskGenerator("sam-tiny", recipe, manifest=manifest, fast=False, cache=False)
    result = generate(photo)
    assert result.segmask is not None and result.maskset is not None
    assert result.count == len(result.maskset) > 0
    masks = list(result.maskset.iter_masks())
    assert any(mask.any() for mask in masks)
    np.testing.assert_array_equal(result.segmask, encode_segmask(masks, photo.shape[:2]))
    assert result.groups == len(np.unique(result.segmask))
    # The same masks, in the same order, as segment-anything's generator fed the BGR image.
    stock = SamAutomaticMaskGenerator(
        sam.load_sam(manifest.get("sam-tiny")), **sam.effective_amg(recipe.amg)
    ).generate(np.ascontiguousarray(photo[..., ::-1]))
    assert len(stock) == len(masks)
    for ann, mask, rec in zip(stock, masks, result.maskset.records, strict=True):
        np.testing.assert_array_equal(ann["segmentation"], mask)
        assert (rec.area, list(rec.bbox)) == (ann["area"], ann["bbox"])
        assert rec.predicted_iou == ann["predicted_iou"]


def test_module_level_generate_matches_the_mask_generator(
    manifest: weights.Manifest, photo: np.ndarray
) -> None:
    recipe = recipe_of(manifest, amg={"points_per_side": 2})
    maskset = sam.generate(photo, manifest.get("sam-tiny"), recipe, fast=False)
    again = MaskGenerator("sam-tiny", recipe, manifest=manifest, fast=False, cache=False)
    result = again(photo)
    assert result.maskset is not None
    assert maskset.records == result.maskset.records


@pytest.mark.parametrize("order", ["bgr", "rgb"])
def test_sam_sees_the_recipe_channel_order(
    manifest: weights.Manifest,
    photo: np.ndarray,
    sam_inputs: list[np.ndarray],
    order: str,
) -> None:
    recipe = recipe_of(manifest, channel_order=order, amg={"points_per_side": 2})
    MaskGenerator("sam-tiny", recipe, manifest=manifest, fast=False, cache=False)(photo)
    (seen,) = sam_inputs
    expected = photo[..., ::-1] if order == "bgr" else photo
    np.testing.assert_array_equal(seen, expected)
    assert not np.array_equal(seen, photo[..., ::-1] if order == "rgb" else photo)


def test_bgr_and_rgb_masks_are_cached_apart(
    manifest: weights.Manifest, photo: np.ndarray, sam_inputs: list[np.ndarray]
) -> None:
    small = {"points_per_side": 2}
    for order in ("bgr", "rgb", "bgr"):
        recipe = recipe_of(manifest, channel_order=order, amg=small)
        MaskGenerator("sam-tiny", recipe, manifest=manifest, fast=False)(photo)
    assert len(sam_inputs) == 2  # the second BGR run was a cache hit
    assert len(list((weights.cache_root() / "masks").rglob("*.json"))) == 2


def test_a_cache_hit_skips_sam_even_without_its_weights(
    manifest: weights.Manifest, photo: np.ndarray, sam_inputs: list[np.ndarray]
) -> None:
    recipe = recipe_of(manifest, amg={"points_per_side": 2})
    first = MaskGenerator("sam-tiny", recipe, manifest=manifest, fast=False)
    made = first(photo)
    assert first.sam_runs == 1 and len(sam_inputs) == 1
    weights.local_path(manifest.get("sam-tiny")).unlink()  # SAM can no longer be loaded
    second = MaskGenerator("sam-tiny", recipe, manifest=manifest, fast=False)
    hit = second(photo)
    assert second.sam_runs == 0 and len(sam_inputs) == 1
    np.testing.assert_array_equal(hit.segmask, made.segmask)
    np.testing.assert_array_equal(hit.labels, made.labels)
    assert (hit.count, hit.groups, hit.maskset) == (made.count, made.groups, None)
    # Per-mask outputs need SAM itself: that really tries to load the (missing) weights.
    with pytest.raises(WeightsNotFoundError):
        second(photo, need_maskset=True)


def test_no_cache_runs_sam_every_time(
    manifest: weights.Manifest, photo: np.ndarray, sam_inputs: list[np.ndarray]
) -> None:
    recipe = recipe_of(manifest, amg={"points_per_side": 2})
    generate = MaskGenerator("sam-tiny", recipe, manifest=manifest, fast=False, cache=False)
    generate(photo)
    generate(photo)
    assert generate.sam_runs == 2 and len(sam_inputs) == 2
    assert not (weights.cache_root() / "masks").exists()


def test_fast_path_gives_a_maskset_encoded_the_same_way(
    manifest: weights.Manifest, photo: np.ndarray
) -> None:
    recipe = recipe_of(manifest, amg={"points_per_side": 2})
    result = MaskGenerator("sam-tiny", recipe, manifest=manifest, cache=False)(photo)
    assert result.maskset is not None and len(result.maskset) == result.count
    np.testing.assert_array_equal(
        result.segmask, encode_segmask(result.maskset.iter_masks(), photo.shape[:2])
    )


def test_to_sam_input_swaps_to_a_contiguous_bgr_copy(photo: np.ndarray) -> None:
    bgr = sam.to_sam_input(photo, "bgr")
    assert bgr.flags.c_contiguous and not np.shares_memory(bgr, photo)
    np.testing.assert_array_equal(bgr[..., 0], photo[..., 2])
    assert sam.to_sam_input(photo, "rgb") is photo
    with pytest.raises(UsageError, match="use bgr or rgb"):
        sam.to_sam_input(photo, "grb")


class _Recipe:
    """Stands in for weights.Recipe's fields in the pure recipe functions."""

    def __init__(self, sam: str, channel_order: str, amg: dict[str, float | int]) -> None:
        self.sam, self.channel_order, self.amg = sam, channel_order, amg


TRAINED = _Recipe("sam-vit-h", "bgr", {"points_per_side": 32})


def test_following_the_recipe_has_no_departures() -> None:
    spelled_out = _Recipe("sam-vit-h", "bgr", dict(sam.AMG_DEFAULTS))
    assert sam.recipe_departures(TRAINED, spelled_out, model="segnafnet-gopro") == []


def test_every_departure_is_named_in_a_sentence() -> None:
    used = _Recipe("sam-vit-b", "rgb", {"points_per_side": 16, "pred_iou_thresh": 0.5})
    notes = sam.recipe_departures(TRAINED, used, model="segnafnet-gopro")
    assert notes == [
        "Masks come from sam-vit-b, but segnafnet-gopro was trained on masks from sam-vit-h.",
        "SAM sees the image in RGB order, but segnafnet-gopro was trained on masks of images "
        "fed in BGR order.",
        "points_per_side is 16, but segnafnet-gopro was trained with 32.",
        "pred_iou_thresh is 0.5, but segnafnet-gopro was trained with 0.88.",
    ]


def test_override_recipe_applies_overrides_and_rejects_unknown_ones(
    manifest: weights.Manifest,
) -> None:
    base = trained_recipe(manifest)
    assert sam.override_recipe(base) is base
    changed = sam.override_recipe(
        base, sam="sam-x", channel_order="RGB", amg={"box_nms_thresh": 0.5}
    )
    assert (changed.sam, changed.channel_order) == ("sam-x", "rgb")
    assert changed.amg == {**base.amg, "box_nms_thresh": 0.5}
    assert base.amg.get("box_nms_thresh") is None  # the manifest's recipe is untouched
    with pytest.raises(UsageError, match="use bgr or rgb"):
        sam.override_recipe(base, channel_order="hsv")
    with pytest.raises(UsageError, match="Unknown mask generator parameter"):
        sam.override_recipe(base, amg={"points": 3})
