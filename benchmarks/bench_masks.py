"""Automatic masks: stock ``SamAutomaticMaskGenerator`` versus our ``FastMaskGenerator``.

Each side runs in its own subprocess (so peak memory does not mix) and is timed stage by
stage: image encoder, mask decoder, post-processing (stability, boxes, NMS, full-resolution
masks, the segmask encoding), total. Our side also writes the default mask files
(``--formats``; stock: the generator and the segmask only) and reports a profile of its
post-processing (``PROFILE``: exact upscaling statistics, NMS, masks + segmask, label map,
each writer). Scenarios:

(a) ``vitb``: vit_b with random weights at 720p, default thresholds (encoder/decoder bound);
(b) ``controlled``: a tiny SAM whose decoder output is replaced, in both generators, by
    controlled logits (blobs of a known partition, see ``ControlledLogits``) with realistic
    survivor counts, at 720p and 12 MP (post-processing bound); --quick: 360p only.

    python -m benchmarks.bench_masks [--quick] [--json PATH]

``ControlledLogits`` and ``patch_stock`` / ``patch_fast`` are shared with the tests.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

LOW = 256  # side of SAM's low-res logits


class ControlledLogits:
    """Decoder stand-in: each point prompt gets 3 masks built from a known partition.

    The partition is a Voronoi diagram of ``n_cells`` seeds over the image, drawn in the
    256 x 256 low-res frame (where the image covers the top-left input_size / 4). A point in
    cell c gets: c alone, c with its nearest neighbour, c with its 3 nearest neighbours, as
    signed-distance logits with a per-mask slope (so stability scores fall on both sides of
    the threshold) and per-mask IoU predictions around the threshold, plus a small per-point
    jitter so no two candidates tie.
    """

    def __init__(self, input_size: tuple[int, int], n_cells: int = 300, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        rows, cols = -(-input_size[0] // 4), -(-input_size[1] // 4)
        self.seeds = rng.uniform([0, 0], [rows, cols], size=(n_cells, 2))
        yy, xx = np.mgrid[0:LOW, 0:LOW] + 0.5
        best = np.full((LOW, LOW), np.inf)
        self.labels = np.zeros((LOW, LOW), np.int64)
        for k, (sy, sx) in enumerate(self.seeds):  # nearest seed, without a cells x pixels array
            dist = (yy - sy) ** 2 + (xx - sx) ** 2
            closer = dist < best
            best[closer], self.labels[closer] = dist[closer], k
        self.inside = np.zeros((LOW, LOW), bool)
        self.inside[:rows, :cols] = True
        seed_dist = ((self.seeds[:, None] - self.seeds[None]) ** 2).sum(-1)
        self.neighbours = seed_dist.argsort(1)[:, :4]  # itself first
        self.slopes = np.exp(rng.uniform(np.log(2.0), np.log(40.0), size=(n_cells, 3)))
        self.ious = rng.uniform(0.75, 1.0, size=(n_cells, 3))
        self.bias = rng.uniform(-0.4, 0.4, size=(n_cells, 3))
        self._rng = rng

    def __call__(self, in_points: Any) -> tuple[Any, Any]:
        """Points B x 2 (x, y) in the model input frame -> (logits B x 3 x 256 x 256, IoU B x 3)."""
        import torch

        pts = in_points.detach().cpu().numpy()
        cells = self.labels[
            np.clip((pts[:, 1] // 4).astype(int), 0, LOW - 1),
            np.clip((pts[:, 0] // 4).astype(int), 0, LOW - 1),
        ]
        logits = np.stack([[self._logits(c, k) for k in range(3)] for c in cells])
        jitter = self._rng.uniform(-0.004, 0.004, size=(len(cells), 3))
        iou = self.ious[cells] + jitter
        return (
            torch.as_tensor(logits, dtype=torch.float32, device=in_points.device),
            torch.as_tensor(iou, dtype=torch.float32, device=in_points.device),
        )

    def _logits(self, cell: int, k: int) -> np.ndarray:
        import cv2

        members = self.neighbours[cell, : (1, 2, 4)[k]]
        mask = (np.isin(self.labels, members) & self.inside).astype(np.uint8)
        inside = cv2.distanceTransform(mask, cv2.DIST_L2, 5)
        outside = cv2.distanceTransform(1 - mask, cv2.DIST_L2, 5)
        sdf = inside - outside + self.bias[cell, k]
        return np.clip(sdf * self.slopes[cell, k], -40.0, 40.0).astype(np.float32)


def patch_stock(generator: Any, logits: Callable[[Any], tuple[Any, Any]]) -> None:
    """Make a stock generator's predictor use ``logits`` instead of SAM's decoder."""
    predictor = generator.predictor

    def predict_torch(
        point_coords: Any,
        point_labels: Any,
        boxes: Any = None,
        mask_input: Any = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[Any, Any, Any]:
        low, iou = logits(point_coords[:, 0, :])
        masks = predictor.model.postprocess_masks(
            low, predictor.input_size, predictor.original_size
        )
        if not return_logits:
            masks = masks > predictor.model.mask_threshold
        return masks, iou, low

    predictor.predict_torch = predict_torch


def patch_fast(generator: Any, logits: Callable[[Any], tuple[Any, Any]]) -> None:
    """Make a FastMaskGenerator use ``logits`` instead of SAM's decoder."""
    generator.decode_points = lambda ctx, in_points: logits(in_points)


def input_size_of(shape: tuple[int, int], img_size: int = 1024) -> tuple[int, int]:
    """ResizeLongestSide's output size for an image of ``shape`` (H, W)."""
    scale = img_size / max(shape)
    return int(shape[0] * scale + 0.5), int(shape[1] * scale + 0.5)


def build_sam(kind: str) -> Any:
    """Random-weight SAM: 'vit_b' (real shapes) or 'tiny' (small encoder and decoder)."""
    import torch
    from segment_anything import sam_model_registry
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    torch.manual_seed(0)
    if kind == "vit_b":
        return sam_model_registry["vit_b"](checkpoint=None).eval()
    dim = 32
    encoder = ImageEncoderViT(
        img_size=1024,
        patch_size=16,
        embed_dim=dim,
        depth=1,
        num_heads=2,
        out_chans=dim,
        window_size=8,
        global_attn_indexes=(),
        use_rel_pos=False,
    )
    prompt = PromptEncoder(
        embed_dim=dim, image_embedding_size=(64, 64), input_image_size=(1024, 1024), mask_in_chans=4
    )
    transformer = TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=64, num_heads=2)
    decoder = MaskDecoder(
        transformer_dim=dim, transformer=transformer, iou_head_depth=3, iou_head_hidden_dim=dim
    )
    return Sam(image_encoder=encoder, prompt_encoder=prompt, mask_decoder=decoder).eval()


def test_image(shape: tuple[int, int]) -> np.ndarray:
    """A real photo (skimage's astronaut) resized to H x W, uint8 RGB."""
    import cv2
    from skimage import data

    return cv2.resize(data.astronaut(), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)


# ---------------------------------------------------------------------------------------
# One side of one scenario, run in a subprocess.


class _StageTimer:
    """Wraps callables so the time spent inside them is summed per stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

        self.cpu_seconds: dict[str, float] = {}

    def wrap(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start, cpu = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start
                used = time.process_time() - cpu
                self.cpu_seconds[stage] = self.cpu_seconds.get(stage, 0.0) + used

        return timed


def run_side(
    side: str,
    scenario: str,
    shape: tuple[int, int],
    points: int,
    threads: int = 0,
    formats: str = "",
) -> dict[str, Any]:
    """Generate masks once and encode the segmask; return stage times and peak RSS.

    ``threads`` > 0 sets torch's intra-op threads (0: torch's default). ``formats`` (ours
    only, e.g. "segmask,npz,overlay"): also make the label map and write those files, each
    timed. Our side's post-processing is profiled stage by stage (``profile``).
    """
    import torch

    if threads > 0:
        torch.set_num_threads(threads)

    from sam_deblur_cli.masks.encode import encode_segmask

    sam = build_sam("vit_b" if scenario == "vitb" else "tiny")
    image = test_image(shape)
    timer = _StageTimer()
    sam.image_encoder.forward = timer.wrap("encoder", sam.image_encoder.forward)
    controlled = (
        ControlledLogits(input_size_of(shape), n_cells=_cells(shape))
        if scenario == "controlled"
        else None
    )
    start, cpu_start = time.perf_counter(), time.process_time()
    if side == "stock":
        from segment_anything import SamAutomaticMaskGenerator

        gen = SamAutomaticMaskGenerator(sam, points_per_side=points)
        if controlled is not None:
            patch_stock(gen, timer.wrap("decoder", controlled))
        else:
            sam.mask_decoder.forward = timer.wrap("decoder", sam.mask_decoder.forward)
        with torch.inference_mode():
            anns = gen.generate(image)
        count = len(anns)
        segmask = encode_segmask(iter([a["segmentation"] for a in anns]), shape)
    else:
        count, segmask = _run_ours(sam, image, points, controlled, timer, formats)
    total = time.perf_counter() - start
    seconds = dict(timer.seconds)
    seconds["total"] = total
    seconds["post"] = total - seconds.get("encoder", 0.0) - seconds.get("decoder", 0.0)
    # CPU seconds (all threads): steadier than wall time when other jobs share the cores.
    cpu = dict(timer.cpu_seconds)
    cpu["total"] = time.process_time() - cpu_start
    cpu["post"] = cpu["total"] - cpu.get("encoder", 0.0) - cpu.get("decoder", 0.0)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "peak_rss_gb": peak_kb / 2**20,
        "masks": count,
        "segmask_sum": int(segmask.astype(np.int64).sum()),
        "segmask_values": len(np.unique(segmask)),
    }


# Our post-processing stages as the profile names them (wall and CPU seconds each).
PROFILE = (
    "upscale stats",
    "nms",
    "masks + segmask",
    "label map",
    "write segmask",
    "write npz",
    "write overlay",
)


def _run_ours(
    sam: Any,
    image: np.ndarray,
    points: int,
    controlled: ControlledLogits | None,
    timer: _StageTimer,
    formats: str,
) -> tuple[int, np.ndarray]:
    """Our generator with every post-processing stage timed (``PROFILE``); the formats in
    ``formats`` are written to a temporary folder. Returns (masks, segmask)."""
    import tempfile

    from sam_deblur_cli.amg import AmgParams
    from sam_deblur_cli.masks import MaskResult
    from sam_deblur_cli.masks import formats as f
    from sam_deblur_cli.masks.encode import (
        count_groups,
        encode_segmask_windows,
        labels_from_segmask,
    )
    from sam_deblur_cli.masks.fast import FastMaskGenerator, FastMaskSet
    from sam_deblur_cli.masks.upscale import ExactUpscaler

    ExactUpscaler.stats = timer.wrap("upscale stats", ExactUpscaler.stats)  # type: ignore[method-assign]
    fast = FastMaskGenerator(sam, AmgParams(points_per_side=points))
    fast._nms = timer.wrap("nms", fast._nms)  # type: ignore[method-assign]
    if controlled is not None:
        patch_fast(fast, timer.wrap("decoder", controlled))
    else:
        fast.decode_points = timer.wrap("decoder", fast.decode_points)  # type: ignore[method-assign]
    maskset = fast.generate(image)
    assert isinstance(maskset, FastMaskSet)  # the fast generator's own set, windows included
    shape = maskset.shape
    segmask = timer.wrap("masks + segmask", encode_segmask_windows)(maskset.iter_windows(), shape)
    names = [n for n in formats.split(",") if n]
    if names:
        labels = timer.wrap("label map", labels_from_segmask)(segmask)
        result = MaskResult(segmask, labels, count_groups(labels), len(maskset), maskset)
        writers = {
            "segmask": lambda path: f.write_segmask_png(path, segmask),
            "npz": lambda path: f.write_groups_npz(path, labels),
            "overlay": lambda path: f.write_overlay_png(path, image, result),
        }
        with tempfile.TemporaryDirectory() as folder:
            for name in names:
                timer.wrap(f"write {name}", writers[name])(Path(folder) / name)
    return len(maskset), segmask


def _cells(shape: tuple[int, int]) -> int:
    """Partition size giving a realistic ~300-400 kept masks with a 32 x 32 grid."""
    return 420


# ---------------------------------------------------------------------------------------
# Driver.


def _spawn(
    side: str, scenario: str, shape: tuple[int, int], points: int, threads: int, formats: str = ""
) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.bench_masks",
        "--threads",
        str(threads),
        f"--formats={formats}",
        "--child",
        side,
        scenario,
        f"{shape[0]}x{shape[1]}",
        str(points),
    ]
    start = time.perf_counter()
    out = subprocess.run(
        cmd, check=True, capture_output=True, text=True, cwd=Path(__file__).parents[1]
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    # The whole child, start-up included: Python, torch and segment_anything imports, the
    # SAM build, generation, the segmask (what a user waits for from a command).
    result["process_s"] = time.perf_counter() - start
    return result


def _scenarios(quick: bool) -> list[tuple[str, str, tuple[int, int], int]]:
    """(name, scenario, (H, W), points per side). --quick keeps within its few minutes: 8^2
    points for (a), whose encoder is the same code on both sides, and (b) at 360p only."""
    if quick:
        return [
            ("(a) vit_b random, 720p", "vitb", (720, 1280), 8),
            ("(b) controlled, 360p", "controlled", (360, 640), 32),
        ]
    return [
        ("(a) vit_b random, 720p", "vitb", (720, 1280), 32),
        ("(b) controlled, 720p", "controlled", (720, 1280), 32),
        ("(b) controlled, 12 MP", "controlled", (3000, 4000), 32),
    ]


def _table(results: list[dict[str, Any]]) -> str:
    """Markdown: wall and CPU seconds per stage, peak RSS, mask counts; ratio = stock / ours."""
    head = (
        "| scenario | points | stage | stock s | ours s | speed-up | stock CPU s | ours CPU s "
        "| CPU speed-up |\n|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in results:
        name = f"| {r['name']} | {r['points']}^2"
        for stage in ("encoder", "decoder", "post", "total"):
            cells = []
            for key in ("seconds", "cpu_seconds"):
                s, o = r["stock"][key].get(stage, 0.0), r["ours"][key].get(stage, 0.0)
                cells.append(f"{s:.2f} | {o:.2f} | " + (f"{s / o:.1f}x" if o > 0 else "-"))
            lines.append(f"{name} | {stage} | {cells[0]} | {cells[1]} |")
        for stage in PROFILE:  # ours only: where our post-processing goes
            if stage in r["ours"]["seconds"]:
                wall, cpu = r["ours"]["seconds"][stage], r["ours"]["cpu_seconds"][stage]
                lines.append(f"{name} | ours: {stage} | - | {wall:.2f} | | - | {cpu:.2f} | |")
        s_mem, o_mem = r["stock"]["peak_rss_gb"], r["ours"]["peak_rss_gb"]
        lines.append(
            f"{name} | peak RSS GB | {s_mem:.2f} | {o_mem:.2f} | {s_mem / o_mem:.1f}x | | | |"
        )
        same = r["stock"]["segmask_sum"] == r["ours"]["segmask_sum"]
        counts = f"{r['stock']['masks']} | {r['ours']['masks']}"
        lines.append(f"{name} | masks (same segmask: {same}) | {counts} | | | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer points, 360p, no 12 MP")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument(
        "--scenario", choices=("vitb", "controlled"), help="run only this scenario (default: all)"
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="torch intra-op threads (default: torch's)"
    )
    parser.add_argument(
        "--formats",
        default="segmask,npz,overlay",
        help="files our side also writes, timed (default: sam-deblur masks' defaults)",
    )
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        side, scenario, size, points = args.child
        h, w = (int(v) for v in size.split("x"))
        result = run_side(side, scenario, (h, w), int(points), args.threads, args.formats)
        print(json.dumps(result))
        return
    results = []
    for name, scenario, shape, points in _scenarios(args.quick):
        if args.scenario and scenario != args.scenario:
            continue
        row = {"name": name, "scenario": scenario, "shape": shape, "points": points}
        for side in ("stock", "ours"):
            formats = args.formats if side == "ours" else ""
            row[side] = _spawn(side, scenario, shape, points, args.threads, formats)
        results.append(row)
        print(_table([row]), flush=True)
    print()
    print(_table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
