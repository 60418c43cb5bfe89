"""A folder of photos through ``run_batch`` one after the other versus overlapped, in one run.

Models: random-weight SAM vit_b and the shallow SegNAFNet (width 32, one block per level) of
bench_e2e, imported behind a benchmark manifest; SAM's decoder output is replaced by
``bench_masks.ControlledLogits`` (realistic survivors; a fresh one per variant, so every
variant gets the same masks). One loaded
Deblurrer runs the same N photos (distinct pixels, so no mask cache hit; the mask cache is
emptied before each variant) as:

- ``sequential``: ``Overlap(in_flight=1)``, each image decoded, segmented, deblurred, written
  before the next starts;
- ``overlapped``: the default ``Overlap()`` (3 in flight; on the CPU decode and write beside
  the network, SAM on the calling thread; on CUDA SAM too beside the network);
- ``overlapped, SAM beside`` on the CPU / ``overlapped, SAM in turn`` on CUDA: the other
  choice for SAM, to show why the default is what it is.

Per variant: wall and CPU seconds (the process, every thread), peak RSS growth, the sum of
each stage's seconds from the records, and whether every output is byte-identical to the
sequential run's. A warm-up image runs first (not timed). Modes: --smoke (tiny SAM and
network, 4 photos of 64 x 96), --quick (4 photos at 360p), full (8 at 720p).

    python -m benchmarks.bench_overlap [--smoke | --quick] [--device cpu|cuda] [--photos N]
                                       [--json PATH]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import markdown_table, peak_rss, write_json

SIZES = {"smoke": (4, (64, 96)), "quick": (4, (360, 640)), "full": (8, (720, 1280))}


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _Controlled:
    """The decoder stand-in of every fast generator built from here on. It draws a jitter per
    call, so each variant starts a fresh one (:meth:`reset`): the same images in the same
    order then get the same masks."""

    def __init__(self, shape: tuple[int, int]) -> None:
        from benchmarks.bench_masks import patch_fast
        from sam_deblur_cli.masks.fast import FastMaskGenerator

        self.shape = shape
        self.reset()
        init, controlled = FastMaskGenerator.__init__, self

        def patched_init(generator: FastMaskGenerator, *args: Any, **kwargs: Any) -> None:
            init(generator, *args, **kwargs)
            patch_fast(generator, lambda points: controlled.logits(points))

        FastMaskGenerator.__init__ = patched_init  # type: ignore[method-assign]

    def reset(self) -> None:
        from benchmarks.stock_pipeline import controlled_logits

        self.logits = controlled_logits(self.shape)


def write_photos(folder: Path, count: int, shape: tuple[int, int]) -> None:
    """``count`` PNG photos of ``shape``: the astronaut shifted, so each has its own masks."""
    import numpy as np
    from PIL import Image

    from benchmarks.bench_masks import test_image

    base = test_image(shape)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        Image.fromarray(np.roll(base, 37 * index, axis=1)).save(folder / f"p{index:02d}.png")


def _hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def variants(device: str) -> dict[str, Any]:
    """Variant name -> Overlap."""
    from sam_deblur_cli.batch.overlap import Overlap

    other = (
        ("overlapped, SAM beside", Overlap(masks_beside_network=True))
        if device == "cpu"
        else ("overlapped, SAM in turn", Overlap(masks_beside_network=False))
    )
    return {"sequential": Overlap(in_flight=1), "overlapped": Overlap(), other[0]: other[1]}


def run(mode: str, device: str, *, photos: int | None = None) -> dict[str, Any]:
    import torch

    from benchmarks.bench_e2e import (
        MODEL,
        SHALLOW,
        SHALLOW_NET,
        TINY_NET,
        prepare_models,
        stock_amg,
    )
    from benchmarks.stock_pipeline import TINY_ARCH

    count, shape = SIZES[mode]
    count = photos or count
    smoke = mode == "smoke"
    model = MODEL if smoke else SHALLOW
    nets = {model: TINY_NET if smoke else SHALLOW_NET}
    amg = {**stock_amg(), "points_per_side": 4} if smoke else stock_amg()
    config = {
        "mode": mode,
        "device": device,
        "photos": count,
        "shape": list(shape),
        "sam_arch": TINY_ARCH if smoke else "vit_b",
        "model": model,
        "torch_threads": torch.get_num_threads(),
        "loadavg_start": os.getloadavg()[0],
    }
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-overlap-") as tmp:
        root = Path(tmp)
        models = prepare_models(root, sam_arch=str(config["sam_arch"]), nets=nets, amg=amg)
        os.environ.update(SAM_DEBLUR_WEIGHTS=str(models.manifest), SAM_DEBLUR_HOME=str(models.home))
        controlled = _Controlled(shape)
        write_photos(root / "in", count, shape)
        rows = _run_variants(root, model, device, controlled)
    config["loadavg_end"] = os.getloadavg()[0]
    return {"config": config, "rows": rows}


def _run_variants(
    root: Path, model: str, device: str, controlled: _Controlled
) -> list[dict[str, Any]]:
    from sam_deblur_cli.amg import RecipeOverrides
    from sam_deblur_cli.batch.local import run_batch
    from sam_deblur_cli.batch.plan import plan_batch
    from sam_deblur_cli.pipeline import Deblurrer, DeblurSettings
    from sam_deblur_cli.weights import cache_root

    deblurrer = Deblurrer(DeblurSettings(recipe=RecipeOverrides(model=model), device=device))
    warm = root / "warm"
    deblurrer.deblur_file(next((root / "in").iterdir()), warm / "w.png")  # not timed
    rows, reference = [], None
    for name, overlap in variants(device).items():
        shutil.rmtree(cache_root() / "masks", ignore_errors=True)
        controlled.reset()
        out = root / name.replace(", ", "-").replace(" ", "-")
        jobs = plan_batch(root / "in", out)
        wall, cpu = time.perf_counter(), _cpu_s()
        with peak_rss() as meter:
            records = run_batch(deblurrer, jobs, overlap=overlap)
        wall, cpu = time.perf_counter() - wall, _cpu_s() - cpu
        hashes = _hashes(out)
        reference = reference or hashes
        stages: dict[str, float] = {}
        for record in records:
            for stage, seconds in record["seconds"].items():
                stages[stage] = stages.get(stage, 0.0) + seconds
        rows.append(
            {
                "variant": name,
                "in_flight": overlap.in_flight,
                "wall_s": wall,
                "cpu_s": cpu,
                "peak_rss_bytes": meter.peak_bytes,
                "stage_s": stages,
                "statuses": sorted({r["status"] for r in records}),
                "identical": hashes == reference,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def table(result: dict[str, Any]) -> str:
    """Markdown: one row per variant, wall and CPU time with ratios to the sequential run."""
    rows = result["rows"]
    base = rows[0]
    body = []
    for r in rows:
        stages = ", ".join(f"{k} {v:.1f}" for k, v in r["stage_s"].items())
        body.append(
            [
                r["variant"],
                f"{r['wall_s']:.1f}",
                f"{r['wall_s'] / base['wall_s']:.2f}",
                f"{r['cpu_s']:.1f}",
                f"{r['peak_rss_bytes'] / (1 << 20):.0f} MB",
                stages,
                "yes" if r["identical"] else "NO",
            ]
        )
    columns = [
        "variant",
        "wall s",
        "wall / sequential",
        "CPU s",
        "peak RSS +",
        "stage s",
        "same bytes",
    ]
    return markdown_table(columns, body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--smoke", action="store_true", help="tiny models, 4 photos of 64 x 96")
    mode.add_argument("--quick", action="store_true", help="4 photos at 360p")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--photos", type=int, help="how many photos (default: the mode's)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if args.device == "cuda":
        from benchmarks.bench_e2e import require_cuda

        require_cuda()
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    result = run(mode, args.device, photos=args.photos)
    print(table(result))
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
