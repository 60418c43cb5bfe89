"""FastMaskGenerator and FastMaskDecoder against segment_anything's stock generator and decoder.

Oracles are segment_anything itself: its MaskDecoder on the same prompts (decoder parity),
and SamAutomaticMaskGenerator with the same SAM (end to end), once with the decoder output
replaced by controlled logits in both paths (the harness the benchmark also uses).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sam_deblur_cli.errors import InputError
from sam_deblur_cli.masks.encode import encode_segmask
from sam_deblur_cli.masks.fast import FastMaskGenerator, _ExactUpscaler
from sam_deblur_cli.masks.fast_decoder import FastMaskDecoder


def _load_bench() -> ModuleType:
    """benchmarks/bench_masks.py holds the controlled-logits harness shared with the benchmark."""
    path = Path(__file__).parents[1] / "benchmarks" / "bench_masks.py"
    spec = importlib.util.spec_from_file_location("bench_masks_for_tests", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench = _load_bench()


def _randomise_norms(module: torch.nn.Module, gen: torch.Generator) -> None:
    """Give every LayerNorm a non-trivial affine so a skipped or misplaced one shows up."""
    for m in module.modules():
        if isinstance(m, torch.nn.LayerNorm) or type(m).__name__ == "LayerNorm2d":
            weight, bias = cast(torch.Tensor, m.weight), cast(torch.Tensor, m.bias)
            weight.data = 0.5 + torch.rand(weight.shape, generator=gen)
            bias.data = 0.2 * torch.randn(bias.shape, generator=gen)


@pytest.fixture(scope="module")
def vit_b_decoder() -> Any:
    """vit_b-shaped prompt encoder + mask decoder with random weights, and an image embedding."""
    from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    prompt = PromptEncoder(
        embed_dim=256,
        image_embedding_size=(64, 64),
        input_image_size=(1024, 1024),
        mask_in_chans=16,
    )
    transformer = TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8)
    decoder = MaskDecoder(
        transformer_dim=256, transformer=transformer, iou_head_depth=3, iou_head_hidden_dim=256
    )
    _randomise_norms(decoder, gen)
    sam = torch.nn.Module()
    sam.prompt_encoder, sam.mask_decoder = prompt.eval(), decoder.eval()
    embedding = torch.randn(1, 256, 64, 64, generator=gen)
    coords = torch.rand(64, 1, 2, generator=gen, dtype=torch.float64) * 1024
    labels = torch.ones(64, 1, dtype=torch.int)
    with torch.inference_mode():
        sparse, dense = prompt(points=(coords, labels), boxes=None, masks=None)
        # One stock pass over 64 prompts serves both output modes (forward only slices it).
        masks, iou = decoder.predict_masks(embedding, prompt.get_dense_pe(), sparse, dense)
    return sam, embedding, coords, labels, masks, iou


@pytest.mark.parametrize("multimask", [True, False])
def test_decoder_matches_stock_for_64_prompts(vit_b_decoder: Any, multimask: bool) -> None:
    sam, embedding, coords, labels, masks, iou = vit_b_decoder
    picked = slice(1, None) if multimask else slice(0, 1)
    with torch.inference_mode():
        fast = FastMaskDecoder(sam)
        logits, iou_pred = fast.predict(fast.prepare(embedding), coords, labels, multimask)
    assert logits.shape == masks[:, picked].shape
    assert masks.abs().max() > 0.1  # the comparison below is not between near-zero tensors
    assert torch.allclose(logits, masks[:, picked], rtol=0, atol=1e-3)
    assert torch.allclose(iou_pred, iou[:, picked], rtol=0, atol=1e-4)


@pytest.mark.parametrize("multimask", [True, False])
def test_decoder_matches_stock_forward_for_one_prompt(vit_b_decoder: Any, multimask: bool) -> None:
    sam, embedding, coords, labels, _, _ = vit_b_decoder
    with torch.inference_mode():
        sparse, dense = sam.prompt_encoder(points=(coords[:1], labels[:1]), boxes=None, masks=None)
        pe = sam.prompt_encoder.get_dense_pe()
        masks, iou = sam.mask_decoder(embedding, pe, sparse, dense, multimask)
        fast = FastMaskDecoder(sam)
        logits, iou_pred = fast.predict(fast.prepare(embedding), coords[:1], labels[:1], multimask)
    assert logits.shape == masks.shape == (1, 3 if multimask else 1, 256, 256)
    assert torch.allclose(logits, masks, rtol=0, atol=1e-3)
    assert torch.allclose(iou_pred, iou, rtol=0, atol=1e-4)


@pytest.mark.parametrize("shape", [(720, 1280), (2100, 1500), (300, 400), (1024, 1024)])
@pytest.mark.parametrize("by_rows", [True, False])
def test_upscaler_statistics_equal_full_resolution(shape: tuple[int, int], by_rows: bool) -> None:
    """Counts, boxes and masks equal those of Sam.postprocess_masks output, bit for bit."""
    from segment_anything.utils.amg import batched_mask_to_box

    up = _ExactUpscaler(bench.input_size_of(shape), shape, 1024, "cpu")
    assert up.style is not None  # torch's kernel was reproduced on this machine
    up.by_rows = by_rows
    controlled = bench.ControlledLogits(bench.input_size_of(shape), n_cells=12, seed=3)
    points = torch.tensor([[100.0, 80.0], [400.0, 300.0], [900.0, 500.0]])
    low = controlled(points)[0].flatten(0, 1)
    low = torch.cat([low, torch.full((1, 256, 256), -5.0)])  # an empty mask too
    with torch.inference_mode():
        above, below, area, boxes = up.stats(low, 1.0, -1.0, 0.0)
        full = _postprocess_masks(low, bench.input_size_of(shape), shape)
    assert torch.equal(above, (full > 1.0).flatten(1).sum(1))
    assert torch.equal(below, (full > -1.0).flatten(1).sum(1))
    assert torch.equal(area, (full > 0.0).flatten(1).sum(1))
    assert torch.equal(boxes, batched_mask_to_box(full > 0.0))
    assert area[-1] == 0 and boxes[-1].tolist() == [0, 0, 0, 0]
    for k in (0, 4):
        assert np.array_equal(up.mask(low[k], 0.0), (full[k] > 0).numpy())


def _postprocess_masks(
    low: torch.Tensor, input_size: tuple[int, int], shape: tuple[int, int]
) -> torch.Tensor:
    """segment_anything's Sam.postprocess_masks for a 1024 encoder, restated: n x H x W."""
    up = F.interpolate(low[:, None], (1024, 1024), mode="bilinear", align_corners=False)
    up = up[..., : input_size[0], : input_size[1]]
    return F.interpolate(up, shape, mode="bilinear", align_corners=False)[:, 0]


@pytest.mark.parametrize(
    ("shape", "crop"),
    [((720, 1280), (145, 256)), ((2100, 1500), (256, 184)), ((1024, 1024), (256, 256))],
)
def test_upscaler_resizes_only_the_low_res_rows_the_crop_reads(
    shape: tuple[int, int], crop: tuple[int, int]
) -> None:
    """The first resize reads only the low-res rows/columns inside the input frame, and its
    output still equals the verbatim chain bit for bit, near the crop edge included."""
    up = _ExactUpscaler(bench.input_size_of(shape), shape, 1024, "cpu")
    assert up._first_crop[:2] == crop
    low = torch.randn(3, 256, 256, generator=torch.Generator().manual_seed(5)) * 6
    low[:, crop[0] - 2 :, :] += 40.0  # the rows past the crop must not leak into it
    low[:, :, crop[1] - 2 :] -= 40.0
    with torch.inference_mode():
        assert torch.equal(
            up._stock_chain(low), _postprocess_masks(low, bench.input_size_of(shape), shape)
        )


def test_controlled_logits_reproduce_stock_segmask_at_1mp() -> None:
    """Same decoder output in both paths -> same masks, records and segmask on >= 1 MP."""
    from segment_anything import SamAutomaticMaskGenerator

    shape = (1024, 1024)
    sam, image = bench.build_sam("tiny"), bench.test_image(shape)
    params: dict[str, Any] = {"points_per_side": 10, "pred_iou_thresh": 0.88}
    params["stability_score_thresh"] = 0.95
    stock = SamAutomaticMaskGenerator(sam, **params)
    bench.patch_stock(stock, bench.ControlledLogits(bench.input_size_of(shape), n_cells=70))
    anns = stock.generate(image)
    fast = FastMaskGenerator(sam, **params)
    bench.patch_fast(fast, bench.ControlledLogits(bench.input_size_of(shape), n_cells=70))
    maskset = fast.generate(image)

    assert 20 <= len(anns) == len(maskset)
    for ann, rec in zip(anns, maskset.records, strict=True):
        assert list(rec.bbox) == ann["bbox"] and rec.area == ann["area"]
        assert rec.predicted_iou == ann["predicted_iou"]
        assert rec.stability_score == ann["stability_score"]
        assert list(rec.point_coords) == ann["point_coords"][0]
        assert list(rec.crop_box) == ann["crop_box"]
    ours = encode_segmask(maskset.iter_masks(), shape)
    theirs = encode_segmask([a["segmentation"] for a in anns], shape)
    assert (ours == theirs).mean() >= 0.995
    assert len(np.unique(theirs)) > 10


def _tiny_sam_with_sharp_masks() -> Any:
    """Tiny random SAM whose hypernetworks are scaled up so masks have confident logits."""
    sam = bench.build_sam("tiny")
    with torch.no_grad():
        for mlp in sam.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(50.0)
    return sam


def test_tiny_sam_end_to_end_gives_stock_masks() -> None:
    from segment_anything import SamAutomaticMaskGenerator

    sam, image = _tiny_sam_with_sharp_masks(), bench.test_image((160, 200))
    # Random masks all span the image, so box NMS is off (1.0) to keep several in play.
    params: dict[str, Any] = {"points_per_side": 6, "pred_iou_thresh": 0.0}
    params["stability_score_thresh"] = 0.2
    params["box_nms_thresh"] = 1.0
    anns = SamAutomaticMaskGenerator(sam, **params).generate(image)
    maskset = FastMaskGenerator(sam, **params).generate(image)
    assert len(anns) >= 3 and len(maskset) == len(anns)
    assert maskset.shape == (160, 200)
    for ann, rec, mask in zip(anns, maskset.records, maskset.iter_masks(), strict=True):
        assert mask.dtype == np.bool_ and mask.shape == (160, 200)
        assert (mask == ann["segmentation"]).mean() > 0.999
        assert rec.predicted_iou == pytest.approx(ann["predicted_iou"], abs=1e-4)
        assert list(rec.point_coords) == ann["point_coords"][0]


def test_small_region_removal_delegates_to_stock_generator(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from segment_anything import SamAutomaticMaskGenerator

    sam, image = _tiny_sam_with_sharp_masks(), bench.test_image((64, 80))
    params: dict[str, Any] = {"points_per_side": 3, "min_mask_region_area": 30}
    params["stability_score_thresh"] = 0.2
    params["pred_iou_thresh"] = 0.0
    anns = SamAutomaticMaskGenerator(sam, **params).generate(image)
    with caplog.at_level("INFO", logger="sam_deblur_cli.masks.fast"):
        maskset = FastMaskGenerator(sam, **params).generate(image)
    assert "min_mask_region_area" in caplog.text
    assert len(maskset) == len(anns) > 0
    for ann, rec, mask in zip(anns, maskset.records, maskset.iter_masks(), strict=True):
        assert np.array_equal(mask, ann["segmentation"])
        assert list(rec.bbox) == ann["bbox"] and rec.area == ann["area"]


@pytest.mark.parametrize(
    ("settings", "reason"),
    [
        ({"crop_n_layers": 1}, "crop_n_layers"),
        ({"points_per_side": None, "point_grids": [np.full((4, 2), 0.5)]}, "point_grids"),
        ({}, ""),
    ],
)
def test_settings_outside_the_fast_path_are_named(settings: dict[str, Any], reason: str) -> None:
    generator = FastMaskGenerator(bench.build_sam("tiny"), **settings)
    assert (reason in generator.delegate_reason) and (
        bool(generator.delegate_reason) == bool(reason)
    )


def test_rejects_non_uint8_rgb() -> None:
    generator = FastMaskGenerator(bench.build_sam("tiny"))
    with pytest.raises(InputError, match="uint8"):
        generator.generate(np.zeros((32, 32, 3), np.float32))
    with pytest.raises(InputError, match="uint8"):
        generator.generate(np.zeros((32, 32), np.uint8))
