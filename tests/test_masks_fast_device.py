"""masks/fast_device.py (the CUDA path), run on the CPU against segment-anything's generator."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from mask_bench import bench
from tiny_sam import build_tiny_sam

from sam_deblur_cli.amg import AmgParams
from sam_deblur_cli.masks import result_from_maskset
from sam_deblur_cli.masks.encode import encode_segmask
from sam_deblur_cli.masks.fast import FastMaskGenerator
from sam_deblur_cli.masks.fast_device import generate_on_device, prompt_batch

SHAPE = (120, 160)
PARAMS: dict[str, Any] = {"points_per_side": 8, "pred_iou_thresh": 0.88}
PARAMS["stability_score_thresh"] = 0.95


def assert_same_as_stock(anns: list[dict[str, Any]], maskset: Any) -> None:
    assert len(anns) == len(maskset)
    for ann, rec, mask in zip(anns, maskset.records, maskset.iter_masks(), strict=True):
        assert list(rec.bbox) == ann["bbox"] and rec.area == ann["area"]
        assert rec.predicted_iou == ann["predicted_iou"]
        assert rec.stability_score == ann["stability_score"]
        assert list(rec.point_coords) == ann["point_coords"][0]
        assert list(rec.crop_box) == ann["crop_box"]
        assert np.array_equal(mask, ann["segmentation"])
    stock = encode_segmask([a["segmentation"] for a in anns], maskset.shape)
    assert np.array_equal(maskset.segmask, stock)
    assert np.array_equal(result_from_maskset(maskset).segmask, stock)


def test_controlled_logits_give_the_stock_masks_and_segmask_for_any_batch() -> None:
    """Stock at its default batch of 64; ours at 64 and at 7 (batch size changes nothing)."""
    from segment_anything import SamAutomaticMaskGenerator

    sam, image = build_tiny_sam(0), bench.test_image(SHAPE)
    stock = SamAutomaticMaskGenerator(sam, **PARAMS)
    # One stand-in per run: its per-point jitter comes from a generator it advances.
    bench.patch_stock(stock, bench.ControlledLogits(bench.input_size_of(SHAPE), n_cells=40))
    anns = stock.generate(image)
    assert len(anns) >= 10
    for points_per_batch in (64, 7):
        ours = FastMaskGenerator(sam, AmgParams(**PARAMS, points_per_batch=points_per_batch))
        bench.patch_fast(ours, bench.ControlledLogits(bench.input_size_of(SHAPE), n_cells=40))
        with torch.inference_mode():
            maskset = generate_on_device(ours, image)
        assert len(np.unique(maskset.segmask)) > 10
        assert_same_as_stock(anns, maskset)


def test_a_real_tiny_sam_gives_the_stock_masks() -> None:
    """The real decoder (ours shares its per-image work: float rounding) end to end."""
    from segment_anything import SamAutomaticMaskGenerator

    sam, image = build_tiny_sam(0), bench.test_image((96, 128))
    with torch.no_grad():
        for mlp in sam.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(50.0)  # confident logits, so masks are not all noise
    params: dict[str, Any] = {"points_per_side": 6, "pred_iou_thresh": 0.0}
    params.update(stability_score_thresh=0.2, box_nms_thresh=1.0)
    anns = SamAutomaticMaskGenerator(sam, **params).generate(image)
    with torch.inference_mode():
        maskset = generate_on_device(FastMaskGenerator(sam, AmgParams(**params)), image)
    assert len(anns) >= 3 and len(maskset) == len(anns)
    stock = encode_segmask([a["segmentation"] for a in anns], maskset.shape)
    assert (maskset.segmask == stock).mean() > 0.999
    for ann, rec in zip(anns, maskset.records, strict=True):
        assert rec.predicted_iou == pytest.approx(ann["predicted_iou"], abs=1e-4)
        assert list(rec.point_coords) == ann["point_coords"][0]


def test_no_survivor_gives_an_empty_segmask() -> None:
    sam, image = build_tiny_sam(0), bench.test_image((32, 48))
    gen = FastMaskGenerator(sam, AmgParams(points_per_side=2, pred_iou_thresh=0.999))
    with torch.inference_mode():
        maskset = generate_on_device(gen, image)
    assert len(maskset) == 0 and maskset.segmask.shape == (32, 48)
    assert not maskset.segmask.any()


def test_prompt_batches_are_the_recipes_on_the_cpu() -> None:
    assert prompt_batch(torch.device("cpu"), 64, 1024) == 64
