"""Time to result with the models loaded once: a photo end to end, a folder of photos, a video;
ours against the stock loop in one run (issue #20's steady-state rows).

Models: a random-weight SAM (vit_b; vit_h with ``--vit-h``; the tiny test SAM with
``--smoke``) and the full-depth SegNAFNet shapes (``bench_e2e.FULL_NET``; the shallow net in
``--quick``, a width-8 one in ``--smoke``) behind a benchmark manifest, the default recipe's
generator settings and SAM's real decoder. Random weights keep few masks, so the rows time
the encoder, the decoder and filtering, the MAP, the network and the I/O; the post-processing
of hundreds of survivors is ``bench_steady``'s controlled row.

- **Stock**: the stock pipeline of ``stock_pipeline.py`` with its models loaded once, one
  photo after another: ``cv2.imread``, ``SamAutomaticMaskGenerator.generate``, upstream's
  segmask and groups, the upstream-style SegNAFNet (TLC, as the model entry), ``cv2.imwrite``;
  for the video, PyAV decoding and the engine's encoder settings around the same per-frame
  work (``bench_video.naive``).
- **Ours**: one ``Deblurrer`` with the defaults (precision ``auto``: bf16 on CUDA, fp32 on the
  CPU), its mask cache off: ``deblur_file`` per photo, ``run_batch`` for the folder (the
  default overlap, and one photo at a time to show what overlapping gains), ``run_video``
  with SAM on every frame and on every 8th (``batch_frames`` auto).

Rows, in this order, each after one untimed warm-up of its path: the photo (seconds from
the file to the written file, best and median of ``--repeat``; the largest difference between
the two outputs in 8-bit levels), the folder (photos/s), the video (frames/s) and the large
photo (one timed run a side). The stock loop over the folder and the video stops once
``--stock-budget`` seconds are spent (at least 2 items; its rate comes from the items done),
so a slow stock side costs bounded time. Each row gives the peak RSS growth and, on CUDA,
the peak allocation (both sides' models stay loaded throughout). Rows are printed as JSON
lines as they finish and the JSON file is rewritten after each, so a run cut short by a time
limit keeps what it measured.

Modes: ``--smoke`` (tiny models, 96 x 128, 4 x 4 points: seconds), ``--quick`` (SAM vit_b,
the shallow net, 360p, 16 x 16 points, 3 photos, 6 frames: CPU-sized), full (the issue's
sizes and the recipe's 32 x 32 points: 1080p and 12 MP photos, 32 photos at 1080p, 24
frames at 1080p).

    python -m benchmarks.bench_throughput [--smoke | --quick] [--vit-h] [--device cpu|cuda]
        [--repeat 3] [--photos N] [--frames N] [--stock-budget S] [--skip ROW] [--json PATH]
        [--profile PATH]

``--profile``: one more run of ours on the photo under torch's profiler, its operator table
(device time, then host time on CUDA) written to PATH: where the time goes when a target is
missed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import markdown_table, peak_rss, write_json

ROWS = ("photo", "photo-12mp", "batch", "video")
MASK_EVERY = (1, 8)


@dataclass(frozen=True)
class Sizes:
    """One mode's sizes: photo H x W, the large photo (None: skipped), folder, video."""

    photo: tuple[int, int]
    large: tuple[int, int] | None
    photos: int
    frames: int
    video: tuple[int, int]


SIZES = {
    "smoke": Sizes((96, 128), None, 3, 4, (96, 128)),
    "quick": Sizes((360, 640), None, 3, 6, (360, 640)),
    "full": Sizes((1080, 1920), (3000, 4000), 32, 24, (1080, 1920)),
}


# --------------------------------------------------------------------------- timing


@contextmanager
def measured(device: str) -> Iterator[dict[str, Any]]:
    """Wall seconds, peak RSS growth and (CUDA) peak allocation of the block, into the dict."""
    import torch

    out: dict[str, Any] = {}
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with peak_rss() as meter:
        start = out["start"] = time.perf_counter()
        yield out
        if cuda:
            torch.cuda.synchronize()
        out["seconds"] = time.perf_counter() - start
    del out["start"]
    out["peak_rss_bytes"] = meter.peak_bytes
    if cuda:
        out["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()


def repeated(fn: Callable[[], Any], repeat: int, device: str) -> dict[str, Any]:
    """One untimed warm-up, then ``repeat`` timed calls: best and median seconds, peaks."""
    fn()
    seconds, peaks = [], []
    for _ in range(repeat):
        with measured(device) as m:
            fn()
        seconds.append(m["seconds"])
        peaks.append(m)
    out: dict[str, Any] = {"best_s": min(seconds), "median_s": statistics.median(seconds)}
    out["peak_rss_bytes"] = max(p["peak_rss_bytes"] for p in peaks)
    if "peak_gpu_bytes" in peaks[0]:
        out["peak_gpu_bytes"] = max(p["peak_gpu_bytes"] for p in peaks)
    return out


def profile_call(fn: Callable[[], Any], device: str, path: Path, rows: int = 40) -> None:
    """Run ``fn()`` once under torch's profiler and write its operator table to ``path``:
    the ``rows`` operators with the most device time on CUDA (CPU time elsewhere), then the
    same table by CPU time on CUDA (where the host waits: syncs, Python, copies)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    cuda = device.startswith("cuda")
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    with profile(activities=activities) as prof:
        fn()
        if cuda:
            torch.cuda.synchronize()
    table = prof.key_averages()
    # torch 2.4 renamed the device column (the old name still sorts, with a FutureWarning)
    device_key = "self_device_time_total"
    if table and not hasattr(table[0], device_key):
        device_key = "self_cuda_time_total"
    keys = [device_key, "self_cpu_time_total"] if cuda else ["self_cpu_time_total"]
    text = [f"# sorted by {key}\n{table.table(sort_by=key, row_limit=rows)}" for key in keys]
    path.write_text("\n\n".join(text) + "\n")


# --------------------------------------------------------------------------- the two sides


class StockLoop:
    """The stock pipeline with SAM and the network loaded once (a user's loop over the
    published code): ``photo(src, dst)`` per file, ``frame(rgb) -> rgb`` per video frame."""

    def __init__(self, models: Any, model: str, device: str) -> None:
        from benchmarks.stock_pipeline import Stages, load_generator, load_stock_network

        net_file, net = models.nets[model]
        spec = {
            "sam_arch": models.sam_arch,
            "sam_checkpoint": str(models.sam_file),
            "amg": models.amg,
            "device": device,
            "controlled": False,
        }
        self.generator = load_generator(spec, (0, 0))
        self.net = load_stock_network(net_file, net, tlc=True).to(device)
        self.stages = Stages()

    def bgr(self, bgr: np.ndarray) -> np.ndarray:
        """H x W x 3 uint8 BGR in, the deblurred uint8 BGR out."""
        from benchmarks.stock_pipeline import deblur_with, masks_with, upstream_labels

        segmask, _ = masks_with(self.generator, bgr, self.stages)
        labels, _ = upstream_labels(segmask)
        return deblur_with(self.net, bgr, labels, self.stages)

    def photo(self, src: Path, dst: Path) -> None:
        import cv2

        cv2.imwrite(str(dst), self.bgr(cv2.imread(str(src), cv2.IMREAD_COLOR)))

    def frame(self, rgb: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self.bgr(np.ascontiguousarray(rgb[:, :, ::-1]))[:, :, ::-1])


def our_deblurrer(model: str, device: str, precision: str = "auto") -> Any:
    """The Deblurrer a user gets for ``model`` (defaults otherwise), mask cache off."""
    from sam_deblur_cli.amg import RecipeOverrides
    from sam_deblur_cli.pipeline import Deblurrer, DeblurSettings

    recipe = RecipeOverrides(model=model)
    deblurrer = Deblurrer(DeblurSettings(recipe=recipe, device=device, precision=precision))
    deblurrer._mask_generator().cache = None  # every photo pays for its masks, as stock does
    return deblurrer


# --------------------------------------------------------------------------- rows


def photo_row(
    name: str,
    photo: Path,
    work: Path,
    ours: Any,
    stock: StockLoop,
    repeat: int,
    device: str,
    profile: Path | None = None,
) -> dict[str, Any]:
    """One photo file to its written output, best of ``repeat`` per side; ``profile``: then
    one more run of ours under torch's profiler, its table written there."""
    from benchmarks.bench_e2e import compare_outputs
    from sam_deblur_cli.pipeline import FileOptions

    out_ours, out_stock = work / f"{name}-ours.png", work / f"{name}-stock.png"
    overwrite = FileOptions(overwrite=True)
    row: dict[str, Any] = {"row": name, "unit": "s"}
    row["stock"] = repeated(lambda: stock.photo(photo, out_stock), repeat, device)
    row["ours"] = repeated(
        lambda: ours.deblur_file(photo, out_ours, options=overwrite), repeat, device
    )
    row["outputs"] = compare_outputs(str(out_ours), str(out_stock))
    if profile is not None:
        profile_call(lambda: ours.deblur_file(photo, out_ours, options=overwrite), device, profile)
        row["profile"] = str(profile)
    return row


def batch_row(
    folder: Path, work: Path, ours: Any, stock: StockLoop, budget_s: float, device: str
) -> dict[str, Any]:
    """Every photo of ``folder``: stock in a loop (within budget), ours through run_batch
    overlapped (the default) and one photo at a time (``ours_in_turn``: what the overlap
    gains). Each side warms up on a folder of the first photo alone."""
    from sam_deblur_cli.batch.local import run_batch
    from sam_deblur_cli.batch.overlap import Overlap
    from sam_deblur_cli.batch.plan import plan_batch

    photos = sorted(folder.iterdir())
    warm = work / "warm-in"
    warm.mkdir()
    shutil.copy(photos[0], warm / photos[0].name)
    stock.photo(photos[0], work / "warm-stock.png")
    run_batch(ours, plan_batch(warm, work / "warm-ours"))
    out = work / "batch-stock"
    out.mkdir()
    with measured(device) as s:
        done = 0
        for done, src in enumerate(photos, 1):
            stock.photo(src, out / src.name)
            if done >= 2 and time.perf_counter() - s["start"] > budget_s:
                break
    sides: dict[str, Any] = {}
    for side, overlap in (("ours", Overlap()), ("ours_in_turn", Overlap(in_flight=1))):
        with measured(device) as o:
            records = run_batch(ours, plan_batch(folder, work / side), overlap=overlap)
        failed = [r["input"] for r in records if r["status"] != "ok"]
        sides[side] = {**_rate(o, len(records)), "failed": failed}
    return {
        "row": "batch",
        "unit": "photos/s",
        "stock": {**_rate(s, done), "of": len(photos)},
        **sides,
    }


def video_rows(
    clip: Path, work: Path, ours: Any, stock: StockLoop, budget_s: float, device: str
) -> list[dict[str, Any]]:
    """The clip: the stock loop per frame (within budget), ours with SAM every 1 and 8."""
    from benchmarks.bench_video import naive
    from sam_deblur_cli.video.engine import VideoSettings, run_video

    with measured(device) as s:  # the caller warmed the stock side up at the clip's size
        done = naive(stock.frame, clip, work / "video-stock.mp4", budget_s=budget_s)
    rows = []
    warm = VideoSettings(mask_every=max(MASK_EVERY), batch_frames="auto")
    run_video(ours, clip, work / "warm.mp4", settings=warm)  # the batched shapes' first kernels
    for every in MASK_EVERY:
        settings = VideoSettings(mask_every=every, batch_frames="auto")
        with measured(device) as o:
            record = run_video(ours, clip, work / f"video-{every}.mp4", settings=settings)
        frames = record.get("frames", 0)
        rows.append(
            {
                "row": f"video, SAM every {every}",
                "unit": "frames/s",
                "stock": {**_rate(s, done), "of": frames},
                "ours": {**_rate(o, frames), "sam_runs": record.get("key_frames")},
            }
        )
    return rows


def _rate(m: dict[str, Any], items: int) -> dict[str, Any]:
    """Items per second of a ``measured`` block, with its peaks."""
    peaks = {k: v for k, v in m.items() if k.startswith("peak_")}
    return {"items": items, "seconds": m["seconds"], "rate": items / m["seconds"], **peaks}


# --------------------------------------------------------------------------- the run


def run(
    mode: str,
    device: str,
    *,
    vit_h: bool = False,
    repeat: int = 3,
    photos: int | None = None,
    frames: int | None = None,
    stock_budget_s: float = 60.0,
    precision: str = "auto",
    skip: tuple[str, ...] = (),
    json_path: Path | None = None,
    profile: Path | None = None,
) -> dict[str, Any]:
    """Every row of ``mode`` not in ``skip``; the JSON-able result (also written to
    ``json_path`` after each row). ``profile``: the first photo row's profile table."""
    import torch

    from benchmarks.bench_e2e import (
        FULL_NET,
        MODEL,
        SHALLOW,
        SHALLOW_NET,
        TINY_NET,
        prepare_models,
        stock_amg,
    )
    from benchmarks.stock_pipeline import TINY_ARCH

    sizes = SIZES[mode]
    count, length = photos or sizes.photos, frames or sizes.frames
    model, net = {"smoke": (MODEL, TINY_NET), "quick": (SHALLOW, SHALLOW_NET)}.get(
        mode, (MODEL, FULL_NET)
    )
    arch = TINY_ARCH if mode == "smoke" else "vit_h" if vit_h else "vit_b"
    # Stock SAM's decoder at 32 x 32 points takes minutes a photo on 2 cores: --quick uses 16
    points = {"smoke": 4, "quick": 16}.get(mode)
    amg = {**stock_amg(), **({"points_per_side": points} if points else {})}
    config: dict[str, Any] = {
        "mode": mode,
        "device": device,
        "sam_arch": arch,
        "model": model,
        "net": net,
        "precision": precision,
        "points_per_side": amg["points_per_side"],
        "repeat": repeat,
        "stock_budget_s": stock_budget_s,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "loadavg_start": os.getloadavg()[0],
    }
    if device.startswith("cuda"):
        config["gpu"] = torch.cuda.get_device_name()
    result: dict[str, Any] = {"config": config, "rows": []}

    def done(row: dict[str, Any]) -> None:
        result["rows"].append(row)
        print(json.dumps(row), flush=True)
        write_json(json_path, result)

    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp:
        root = Path(tmp)
        (root / "models").mkdir()
        models = prepare_models(root / "models", sam_arch=arch, nets={model: net}, amg=amg)
        os.environ.update(SAM_DEBLUR_WEIGHTS=str(models.manifest), SAM_DEBLUR_HOME=str(models.home))
        stock = StockLoop(models, model, device)
        ours = our_deblurrer(model, device, precision)
        work = root / "work"
        work.mkdir()
        config["our_precision"] = ours.placement.precision
        for key, name, rows in _rows(root, work, sizes, count, length, profile):
            if key in skip or (key == "photo-12mp" and sizes.large is None):
                continue
            try:
                for row in rows(ours, stock, repeat, stock_budget_s, device):
                    done(row)
            except Exception as exc:  # one failing row (e.g. out of GPU memory) ends only itself
                done({"row": name, "error": f"{type(exc).__name__}: {exc}"[:300]})
                if device.startswith("cuda"):
                    torch.cuda.empty_cache()
    config["loadavg_end"] = os.getloadavg()[0]
    write_json(json_path, result)
    return result


_RowsFn = Callable[[Any, StockLoop, int, float, str], list[dict[str, Any]]]


def _rows(
    root: Path, work: Path, sizes: Sizes, count: int, length: int, profile: Path | None
) -> list[tuple[str, str, _RowsFn]]:
    """(--skip key, row name, make the row(s)) in running order: the large photo last (the
    longest per item)."""
    from benchmarks.bench_e2e import write_photo
    from benchmarks.bench_overlap import write_photos
    from benchmarks.bench_video import make_clip

    def photo(
        shape: tuple[int, int], file: str, repeat_cap: int | None = None, prof: Path | None = None
    ) -> _RowsFn:
        def rows(ours: Any, stock: StockLoop, repeat: int, budget: float, device: str) -> Any:
            src = write_photo(root / file, shape)
            times = min(repeat, repeat_cap or repeat)
            return [photo_row(_name(shape), src, work, ours, stock, times, device, prof)]

        return rows

    def batch(ours: Any, stock: StockLoop, repeat: int, budget: float, device: str) -> Any:
        write_photos(root / "folder", count, sizes.photo)
        return [batch_row(root / "folder", work, ours, stock, budget, device)]

    def video(ours: Any, stock: StockLoop, repeat: int, budget: float, device: str) -> Any:
        clip = root / "clip.mp4"
        first = make_clip(clip, length, sizes.video[1], sizes.video[0])[0]
        stock.frame(first)  # warm-up at the clip's size
        return video_rows(clip, work, ours, stock, budget, device)

    large = sizes.large or sizes.photo
    return [
        ("photo", _name(sizes.photo), photo(sizes.photo, "photo.png", prof=profile)),
        ("batch", "batch", batch),
        ("video", "video", video),
        ("photo-12mp", _name(large), photo(large, "large.png", repeat_cap=1)),
    ]


def _name(shape: tuple[int, int]) -> str:
    return f"photo {shape[1]}x{shape[0]}"


def table(result: dict[str, Any]) -> str:
    """Markdown: one line per row, both sides, ours against stock (above 1: ours faster)."""
    body = []
    for r in result["rows"]:
        if "error" in r:
            body.append([r["row"], "-", "-", "-", "-", "-", "-", f"failed: {r['error']}"])
            continue
        s, o = r["stock"], r["ours"]
        if r["unit"] == "s":
            cells = [f"{s['best_s']:.3f} s ({s['median_s']:.3f})"]
            cells += [f"{o['best_s']:.3f} s ({o['median_s']:.3f})"]
            speedup = s["best_s"] / o["best_s"]
            out = r.get("outputs") or {}
            note = f"outputs: max difference {out.get('max_abs_diff', '?')} levels"
        else:
            cells = [f"{s['rate']:.3f}", f"{o['rate']:.3f}"]
            speedup = o["rate"] / s["rate"]
            note = f"stock ran {s['items']} of {s['of']}"
            if "sam_runs" in o:
                note += f"; ours ran SAM {o['sam_runs']} times"
            if "ours_in_turn" in r:
                note += f"; ours one photo at a time: {r['ours_in_turn']['rate']:.3f}"
            if o.get("failed"):
                note += f"; {len(o['failed'])} failed"
        peak = "-"
        if "peak_gpu_bytes" in o:
            peak = f"{s['peak_gpu_bytes'] / 2**30:.1f} / {o['peak_gpu_bytes'] / 2**30:.1f} GB"
        rss = f"{s['peak_rss_bytes'] / 2**30:.2f} / {o['peak_rss_bytes'] / 2**30:.2f} GB"
        body.append([r["row"], r["unit"], *cells, f"{speedup:.2f}x", rss, peak, note])
    c = result["config"]
    head = (
        f"SAM {c['sam_arch']} and {c['model']} (random weights), {c['points_per_side']}^2 "
        f"points, {c['device']}{' (' + c['gpu'] + ')' if 'gpu' in c else ''}, ours in "
        f"{c.get('our_precision', c['precision'])}, torch {c['torch']}; load "
        f"{c['loadavg_start']:.1f} at the start.\n\n"
    )
    columns = ["row", "unit", "stock", "ours", "ours vs stock", "peak RSS + stock / ours"]
    return head + markdown_table([*columns, "peak GPU stock / ours", "notes"], body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--smoke", action="store_true", help="tiny models at 96 x 128 (seconds)")
    mode.add_argument("--quick", action="store_true", help="SAM vit_b, shallow net, 360p")
    parser.add_argument("--vit-h", action="store_true", help="SAM vit_h instead of vit_b")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per photo row")
    parser.add_argument("--photos", type=int, help="photos in the folder (default: the mode's)")
    parser.add_argument("--frames", type=int, help="frames of the video (default: the mode's)")
    parser.add_argument(
        "--stock-budget", type=float, default=60.0, help="seconds of stock loop per row"
    )
    parser.add_argument("--precision", default="auto", help="our network's (auto, fp32, ...)")
    parser.add_argument("--skip", action="append", choices=ROWS, default=[], help="a row")
    parser.add_argument("--json", type=Path, help="write the results here (after each row)")
    parser.add_argument("--profile", type=Path, help="write ours' photo profile table here")
    args = parser.parse_args(argv)
    if args.device == "cuda":
        from benchmarks.bench_e2e import require_cuda

        require_cuda()
    # A time limit's SIGTERM: exit normally, so the temporary folder (models, photos) goes.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    result = run(
        "smoke" if args.smoke else "quick" if args.quick else "full",
        args.device,
        vit_h=args.vit_h,
        repeat=args.repeat,
        photos=args.photos,
        frames=args.frames,
        stock_budget_s=args.stock_budget,
        precision=args.precision,
        skip=tuple(args.skip),
        json_path=args.json,
        profile=args.profile,
    )
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
