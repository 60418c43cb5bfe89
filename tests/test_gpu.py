"""The CUDA paths, run only where a CUDA GPU is present (skipped elsewhere, CI included).

Each check compares the GPU against the CPU run of the same tiny real models: the MAP
unit, whole networks in fp32 (TF32 off), bf16 and fp16, tiling with the out-of-memory
back-off, the fast mask generator, and `eval`'s protocol.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import TinyEnv, small_photo

from sam_deblur_cli.nets import NetConfig, build_network
from sam_deblur_cli.nets.map import mask_average
from sam_deblur_cli.nets.tlc import set_tlc
from sam_deblur_cli.restore import restore

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TINY = {"width": 8, "enc_blk_nums": (1, 1, 1, 2), "middle_blk_num": 1, "dec_blk_nums": (1, 1, 1, 1)}


def _net(variant: str) -> torch.nn.Module:
    torch.manual_seed(0)
    net = build_network(NetConfig(variant=variant, **TINY))  # type: ignore[arg-type]
    with torch.no_grad():
        for name, param in net.named_parameters():
            if name.endswith(("beta", "gamma")):
                param.normal_(0.0, 0.3)
    return net


def _inputs(variant: str) -> tuple[np.ndarray, np.ndarray | None]:
    rgb = small_photo("astronaut", 1)[:300, :420].astype(np.float32) / 255
    rng = np.random.default_rng(1)
    if variant == "plain":
        return rgb, None
    if variant == "cat":
        return rgb, rng.integers(0, 256, rgb.shape[:2], dtype=np.uint8)
    return rgb, rng.integers(0, 40, rgb.shape[:2]).astype(np.int64)


def test_mask_average_on_the_gpu_equals_the_cpu() -> None:
    gen = torch.Generator().manual_seed(3)
    seg = torch.randn(2, 2, 300, 417, generator=gen)
    labels = torch.randint(0, 200, (2, 300, 417), generator=gen)
    labels[:, :, -9:] = -1
    cpu = mask_average(seg, labels)
    gpu = mask_average(seg.cuda(), labels.cuda()).cpu()
    torch.testing.assert_close(gpu, cpu, rtol=0, atol=1e-6)


@pytest.mark.parametrize("tlc", [False, True], ids=["global", "tlc"])
@pytest.mark.parametrize("variant", ["plain", "cat", "map"])
def test_fp32_on_the_gpu_equals_the_cpu(variant: str, tlc: bool) -> None:
    net = _net(variant)
    set_tlc(net, tlc)
    image, guide = _inputs(variant)
    cpu = restore(net, image, guide, device="cpu")
    gpu = restore(net, image, guide, device="cuda", precision="fp32", tf32=False)
    assert np.abs(gpu - cpu).max() < 1e-4


@pytest.mark.parametrize("variant", ["plain", "map"])
def test_strict_fp32_runs_nchw_and_tf32_channels_last_with_the_same_network(variant: str) -> None:
    net = _net(variant)
    image, guide = _inputs(variant)
    seen: list[bool] = []
    hook = net.intro.register_forward_hook(
        lambda _m, inputs, _o: seen.append(inputs[0].is_contiguous())
    )
    strict = restore(net, image, guide, device="cuda", precision="fp32", tf32=False)
    tf32 = restore(net, image, guide, device="cuda", precision="fp32", tf32=True)
    hook.remove()
    assert seen == [True, False]  # NCHW for strict fp32, channels_last with TF32
    assert np.abs(strict - tf32).max() < 1e-2  # TF32's ~10 mantissa bits, nothing more


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precisions_stay_close_to_fp32(precision: str) -> None:
    net = _net("map")
    image, guide = _inputs("map")
    ref = restore(net, image, guide, device="cuda", precision="fp32", tf32=False)
    half = restore(_net("map"), image, guide, device="cuda", precision=precision)
    assert np.isfinite(half).all()
    assert np.abs(half - ref).mean() < 4 / 255


@pytest.mark.parametrize("variant", ["plain", "cat", "map"])
def test_a_batch_of_frames_on_the_gpu_equals_each_frame_on_the_cpu(variant: str) -> None:
    from sam_deblur_cli.restore import restore_batch

    net = _net(variant)
    image, guide = _inputs(variant)
    images = [image, image[::-1].copy(), np.ascontiguousarray(image[:, ::-1])]
    guides = None if guide is None else [guide, guide[::-1].copy(), guide[:, ::-1].copy()]
    gpu = restore_batch(net, images, guides, device="cuda", precision="fp32", tf32=False)
    for i, img in enumerate(images):
        cpu = restore(net, img, None if guides is None else guides[i], device="cpu")
        assert np.abs(gpu[i] - cpu).max() < 1e-4


def test_tiles_on_the_gpu_agree_with_the_whole_image() -> None:
    net = _net("map")
    set_tlc(net, True)
    image, guide = _inputs("map")
    whole = restore(net, image, guide, device="cuda", precision="fp32", tf32=False)
    tiled = restore(net, image, guide, device="cuda", precision="fp32", tf32=False, tile=256)
    assert np.abs(tiled - whole).mean() < 2 / 255


def test_fast_masks_on_the_gpu_match_the_cpu(tiny_env: TinyEnv) -> None:
    from sam_deblur_cli import weights
    from sam_deblur_cli.masks import MaskGenerator
    from sam_deblur_cli.masks.sam import override_recipe

    manifest = weights.load_manifest()
    recipe = manifest.get("segnafnet-gopro").recipe
    assert recipe is not None
    recipe = override_recipe(recipe, sam=None, channel_order=None, amg={"points_per_side": 8})
    photo = small_photo("coffee", 2)
    results = [
        MaskGenerator(recipe.sam, recipe, manifest=manifest, device=dev, cache=False)(photo)
        for dev in ("cpu", "cuda")
    ]
    cpu, gpu = results
    assert cpu.count > 0
    assert abs(cpu.count - gpu.count) <= 1
    assert (cpu.segmask == gpu.segmask).mean() > 0.99


def test_eval_on_the_gpu_runs_the_papers_protocol(tiny_env: TinyEnv, tmp_path: Path) -> None:
    from sam_deblur_cli.datasets import open_dataset
    from sam_deblur_cli.evaluate import EvalSettings, evaluate

    for name in ("astronaut", "chelsea"):
        sharp = small_photo(name, 4)[:96, :128]
        blurred = np.asarray(Image.fromarray(sharp).filter(_box()))
        for folder, rgb in (("input", blurred), ("target", sharp)):
            (tmp_path / "set" / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rgb).save(tmp_path / "set" / folder / f"{name}.png")
    settings = {"models": ("segnafnet-gopro", "nafnet-gopro"), "tlc": False}
    gpu = evaluate(open_dataset(tmp_path / "set"), EvalSettings(device="cuda", **settings))  # type: ignore[arg-type]
    cpu = evaluate(open_dataset(tmp_path / "set"), EvalSettings(device="cpu", **settings))  # type: ignore[arg-type]
    assert gpu.protocol.device == "cuda:0" and gpu.protocol.precision == "fp32"
    assert gpu.protocol.is_papers and gpu.complete
    for g, c in zip(gpu.rows, cpu.rows, strict=True):
        assert (g.name, g.model) == (c.name, c.model)
        assert g.psnr == pytest.approx(c.psnr, abs=0.01)


def _box() -> object:
    from PIL import ImageFilter

    return ImageFilter.BoxBlur(2)


def _sharp_tiny_sam() -> torch.nn.Module:
    from tiny_sam import build_tiny_sam

    sam = build_tiny_sam(0)
    with torch.no_grad():
        for mlp in sam.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(50.0)  # confident logits, so masks are not all noise
    return sam.cuda()


def test_masks_on_the_device_equal_stock_on_cuda_fp32() -> None:
    """The CUDA path (masks/fast_device.py, from FastMaskGenerator.generate) against
    segment-anything's generator on the same GPU: same segmask on >= 99.9 % of pixels,
    and exactly the same with the decoder output controlled (same logits on both sides)."""
    from mask_bench import bench
    from segment_anything import SamAutomaticMaskGenerator

    from sam_deblur_cli.amg import AmgParams
    from sam_deblur_cli.masks.encode import encode_segmask
    from sam_deblur_cli.masks.fast import FastMaskGenerator

    sam, image = _sharp_tiny_sam(), bench.test_image((480, 640))
    params = {"points_per_side": 16, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.2}
    anns = SamAutomaticMaskGenerator(sam, **params).generate(image)
    maskset = FastMaskGenerator(sam, AmgParams(**params)).generate(image)
    assert type(maskset).__name__ == "DeviceMaskSet" and len(anns) > 0
    stock = encode_segmask([a["segmentation"] for a in anns], image.shape[:2])
    assert (maskset.segmask == stock).mean() >= 0.999  # type: ignore[attr-defined]

    shape, params = (720, 1280), {"points_per_side": 32}
    image = bench.test_image(shape)
    generator = SamAutomaticMaskGenerator(sam, **params)
    bench.patch_stock(generator, bench.ControlledLogits(bench.input_size_of(shape)))
    anns = generator.generate(image)
    fast = FastMaskGenerator(sam, AmgParams(**params))
    bench.patch_fast(fast, bench.ControlledLogits(bench.input_size_of(shape)))
    maskset = fast.generate(image)
    stock = encode_segmask([a["segmentation"] for a in anns], shape)
    assert len(anns) > 50 and np.array_equal(maskset.segmask, stock)  # type: ignore[attr-defined]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_sam_precision_runs_the_encoder_reduced_on_cuda(precision: str) -> None:
    from mask_bench import bench

    from sam_deblur_cli.amg import AmgParams
    from sam_deblur_cli.masks.fast import FastMaskGenerator
    from sam_deblur_cli.masks.precision import apply_sam_precision

    sam, image = _sharp_tiny_sam(), bench.test_image((480, 640))
    params = AmgParams(points_per_side=16, pred_iou_thresh=0.0, stability_score_thresh=0.2)
    fp32 = FastMaskGenerator(sam, params).generate(image)
    apply_sam_precision(sam, precision)  # type: ignore[arg-type]
    reduced = FastMaskGenerator(sam, params).generate(image)
    agree = (reduced.segmask == fp32.segmask).mean()  # type: ignore[attr-defined]
    counts = f"{len(reduced)} vs {len(fp32)} masks"
    print(f"SAM {precision} vs fp32 (tiny random SAM): {agree:.4%} pixels equal, {counts}")
    assert len(reduced) > 0 and agree > 0.5
