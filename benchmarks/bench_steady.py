"""Steady-state mask generation: SAM loaded once, warmed up, then timed; ours vs stock.

One photo (skimage's astronaut) at 1024 on its long side, SAM vit_b (vit_h with
``--vit-h``) with random weights, the default recipe's generator settings (32 x 32
points), on ``--device cpu|cuda``; ``--smoke``: the tiny test SAM, 96 x 128, 8 x 8 points. Ours is
``FastMaskGenerator`` (on CUDA: ``masks/fast_device.py``) up to the upstream segmask;
stock is ``SamAutomaticMaskGenerator`` built as its README shows, then upstream's encoding.
Two rows: the real decoder (random weights let few masks through, so post-processing is
light: the row times the encoder and decoder), and the decoder replaced by
``bench_masks.ControlledLogits`` on both sides (~300 realistic survivors: the row times the
post-processing). Each row: best and median of ``--repeat`` runs after one warm-up, masks,
segmask agreement, peak GPU memory on CUDA.

    python -m benchmarks.bench_steady [--smoke] [--vit-h] [--device cpu|cuda]
                                      [--repeat 3] [--sam-precision P] [--encoder-only]
                                      [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

SIZE = (683, 1024)  # H, W: the astronaut is square; a 3:2 photo at 1024 on its long side


def run(
    arch: str,
    device: str,
    repeat: int,
    *,
    smoke: bool = False,
    sam_precision: str = "fp32",
    encoder_only: bool = False,
) -> dict[str, Any]:
    """Both rows for SAM ``arch`` on ``device``; the JSON-able result. ``smoke``: a
    96 x 128 photo and 8 x 8 points (seconds on a CPU, to check that the script runs).
    ``sam_precision``: our side's ``--sam-precision`` (stock runs the published encoder);
    other than fp32 it adds a row of the encoders alone, the only row with ``encoder_only``."""
    import copy

    import numpy as np
    import torch
    from segment_anything import SamAutomaticMaskGenerator, sam_model_registry

    from benchmarks.bench_masks import ControlledLogits, input_size_of, patch_fast, patch_stock
    from benchmarks.bench_masks import test_image as photo
    from benchmarks.common import time_it
    from benchmarks.stock_pipeline import CONTROLLED_CELLS, register_tiny_arch
    from sam_deblur_cli.amg import AmgParams
    from sam_deblur_cli.masks.fast import FastMaskGenerator
    from sam_deblur_cli.masks.precision import apply_sam_precision

    register_tiny_arch()
    torch.manual_seed(0)
    sam = sam_model_registry[arch]().to(device).eval()
    our_sam = sam
    if sam_precision != "fp32":  # our own copy: stock keeps the published encoder
        our_sam = copy.deepcopy(sam)
        apply_sam_precision(our_sam, sam_precision)
    size, points, cells = ((96, 128), 8, 40) if smoke else (SIZE, 32, CONTROLLED_CELLS)
    image = photo(size)
    rows = []
    for controlled in () if encoder_only else (False, True):
        stock = SamAutomaticMaskGenerator(sam, points_per_side=points, output_mode="binary_mask")
        ours = FastMaskGenerator(our_sam, AmgParams(points_per_side=points))
        if controlled:
            patch_stock(stock, ControlledLogits(input_size_of(size), n_cells=cells))
            patch_fast(ours, ControlledLogits(input_size_of(size), n_cells=cells))
        out: dict[str, Any] = {}
        row: dict[str, Any] = {"decoder": "controlled logits" if controlled else "real"}
        sides = (("stock", partial(_stock, stock, image)), ("ours", partial(_ours, ours, image)))
        for side, fn in sides:
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            row[side] = time_it(partial(_store, out, side, fn), repeat=repeat)
            row[side]["masks"] = out[side][1]
            if device == "cuda":
                row[side]["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
        row["segmask_agreement"] = float(np.mean(out["ours"][0] == out["stock"][0]))
        rows.append(row)
    if our_sam is not sam:  # the encoders alone, alternating in this process
        rows.append(_encoders(sam, our_sam, image, repeat, device))
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    config = {
        "sam_arch": arch,
        "device": name,
        "size": list(size),
        "points_per_side": points,
        "sam_precision": sam_precision,
    }
    return {"config": config, "rows": rows}


def _encoders(sam: Any, our_sam: Any, image: Any, repeat: int, device: str) -> dict[str, Any]:
    """The image encoder alone, published vs ours, alternating (best and median of
    ``repeat`` each after one warm-up each): a row of the same shape as the others."""
    import statistics
    import time

    import torch
    from segment_anything.utils.transforms import ResizeLongestSide

    resize = ResizeLongestSide(sam.image_encoder.img_size)  # SamPredictor.set_image's input
    batch = sam.preprocess(
        torch.as_tensor(resize.apply_image(image), device=device).permute(2, 0, 1)[None].float()
    )
    times: dict[str, list[float]] = {"stock": [], "ours": []}
    outputs = {}
    with torch.inference_mode():
        for round_ in range(repeat + 1):
            for side, model in (("stock", sam), ("ours", our_sam)):
                if device == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                outputs[side] = model.image_encoder(batch)
                if device == "cuda":
                    torch.cuda.synchronize()
                if round_:  # the first round warms up
                    times[side].append(time.perf_counter() - start)
    diff = (outputs["ours"] - outputs["stock"]).abs().max().item()
    row: dict[str, Any] = {"decoder": "none: image encoder only", "max_abs_diff": diff}
    for side, seconds in times.items():
        row[side] = {"best_s": min(seconds), "median_s": statistics.median(seconds), "masks": "-"}
    row["segmask_agreement"] = float("nan")
    return row


def _stock(generator: Any, image: Any) -> tuple[Any, int]:
    """segment-anything's generator, then upstream's encoding: (segmask, masks)."""
    from sam_deblur_cli.masks.encode import encode_segmask

    anns = generator.generate(image)
    return encode_segmask([a["segmentation"] for a in anns], image.shape[:2]), len(anns)


def _ours(generator: Any, image: Any) -> tuple[Any, int]:
    """FastMaskGenerator to the segmask (made on the device on CUDA): (segmask, masks)."""
    from sam_deblur_cli.masks import result_from_maskset

    maskset = generator.generate(image)
    return result_from_maskset(maskset).segmask, len(maskset)


def _store(out: dict[str, Any], side: str, fn: Callable[[], Any]) -> None:
    out[side] = fn()


def table(result: dict[str, Any]) -> str:
    """The rows as Markdown: best (median) seconds per side, ratio, masks, agreement."""
    from benchmarks.common import markdown_table

    lines = []
    for r in result["rows"]:
        s, o = r["stock"], r["ours"]
        peak = "-"
        if "peak_gpu_bytes" in o:
            peak = f"{s['peak_gpu_bytes'] / 2**30:.1f} / {o['peak_gpu_bytes'] / 2**30:.1f} GB"
        lines.append(
            [
                r["decoder"],
                f"{s['best_s']:.3f} ({s['median_s']:.3f})",
                f"{o['best_s']:.3f} ({o['median_s']:.3f})",
                f"{o['best_s'] / s['best_s']:.2f}",
                f"{s['masks']} / {o['masks']}",
                f"{100 * r['segmask_agreement']:.3f} %"
                if "max_abs_diff" not in r
                else f"max abs diff {r['max_abs_diff']:.2g}",
                peak,
            ]
        )
    c = result["config"]
    head = (
        f"SAM {c['sam_arch']}, random weights, {c['size'][1]}x{c['size'][0]}, {c['device']}; "
        f"ours with --sam-precision {c.get('sam_precision', 'fp32')}.\n\n"
    )
    columns = ["decoder", "stock s", "ours s", "ours/stock", "masks stock / ours"]
    return head + markdown_table([*columns, "segmask equal", "peak GPU stock / ours"], lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="the tiny SAM (seconds)")
    parser.add_argument("--vit-h", action="store_true", help="SAM vit_h instead of vit_b")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--sam-precision", default="fp32", help="our side's (fp32, fp32-sdpa, bf16, fp16)"
    )
    parser.add_argument(
        "--encoder-only", action="store_true", help="only the encoders' row (a --sam-precision)"
    )
    args = parser.parse_args(argv)
    from benchmarks.stock_pipeline import TINY_ARCH

    arch = TINY_ARCH if args.smoke else "vit_h" if args.vit_h else "vit_b"
    if args.encoder_only and args.sam_precision == "fp32":
        parser.error("--encoder-only compares a --sam-precision other than fp32 with fp32")
    result = run(
        arch,
        args.device,
        args.repeat,
        smoke=args.smoke,
        sam_precision=args.sam_precision,
        encoder_only=args.encoder_only,
    )
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
