"""FastMaskGenerator and FastMaskDecoder against segment_anything's stock generator and decoder.

Oracles are segment_anything itself: its MaskDecoder on the same prompts (decoder parity),
and SamAutomaticMaskGenerator with the same SAM (end to end), once with the decoder output
replaced by controlled logits in both paths (the harness the benchmark also uses).
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import pytest
import torch
from mask_bench import bench

from sam_deblur_cli.amg import AmgParams
from sam_deblur_cli.errors import InputError
from sam_deblur_cli.masks.encode import encode_segmask
from sam_deblur_cli.masks.fast import FastMaskGenerator
from sam_deblur_cli.masks.fast_decoder import FastMaskDecoder


def fast_generator(sam: Any, **settings: Any) -> FastMaskGenerator:
    """FastMaskGenerator with stock-style keyword settings (``point_grids`` among them)."""
    point_grids = settings.pop("point_grids", None)
    return FastMaskGenerator(sam, AmgParams(**settings), point_grids=point_grids)


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
    fast = fast_generator(sam, **params)
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
    maskset = fast_generator(sam, **params).generate(image)
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
        maskset = fast_generator(sam, **params).generate(image)
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
    generator = fast_generator(bench.build_sam("tiny"), **settings)
    assert (reason in generator.delegate_reason) and (
        bool(generator.delegate_reason) == bool(reason)
    )


def test_rejects_non_uint8_rgb() -> None:
    generator = FastMaskGenerator(bench.build_sam("tiny"))
    with pytest.raises(InputError, match="uint8"):
        generator.generate(np.zeros((32, 32, 3), np.float32))
    with pytest.raises(InputError, match="uint8"):
        generator.generate(np.zeros((32, 32), np.uint8))
