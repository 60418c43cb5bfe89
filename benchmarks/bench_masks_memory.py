"""Peak memory of `sam-deblur masks` on a 12 MP photo: the default formats vs segmask alone.

The real command runs in a child process (``bench_e2e --child-cli``, the console script's
code path) with the tiny random-weight SAM of ``bench_masks`` whose decoder output is
replaced by ``ControlledLogits`` (~300-400 realistic masks, 200+ groups at 12 MP), behind a
benchmark manifest and a fresh cache; the mask cache is emptied before each run so SAM
runs every time. Peak RSS is the child's own (``os.wait4``: the whole process, start-up,
torch and SAM included). Cases: ``--format segmask``, the default formats
(segmask,npz,overlay), and ``--format all`` (adds the per-mask PNG folder and COCO RLE).
The target: the default formats peak within 1.2x of segmask alone.

``--stock`` also runs segment-anything's stock generator on the same photo in the same run
(``bench_masks``' stock child: generator and segmask, no files) and gives each case's
speed-up over it. ``--sam vit_b``: a random-weight ViT-B, encoder and decoder included,
instead of the tiny SAM with the controlled decoder stand-in.

    python -m benchmarks.bench_masks_memory [--size 3000x4000] [--cases segmask,default]
                                            [--stock] [--sam tiny|vit_b]
                                            [--json PATH] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.bench_e2e import (
    SHALLOW_NET,
    Models,
    measure,
    prepare_models,
    stock_amg,
    write_photo,
)
from benchmarks.common import markdown_table, write_json
from benchmarks.stock_pipeline import TINY_ARCH

GB = 1 << 30
MODEL = "bench-map"  # only its mask recipe is used: `masks` never builds the network
TINY_NET = {**SHALLOW_NET, "width": 8}
CASES = {"segmask": ["--format", "segmask"], "default": [], "all": ["--format", "all"]}
TARGET = 1.2  # default / segmask


def run_case(
    models: Models,
    photo: Path,
    shape: tuple[int, int],
    name: str,
    work: Path,
    timeout: float,
    sam: str = TINY_ARCH,
) -> dict[str, Any]:
    """One `sam-deblur masks` child for ``CASES[name]``: peak RSS, wall and CPU s, record."""
    shutil.rmtree(models.home / "masks", ignore_errors=True)  # SAM runs every time
    out = work / f"out-{name}"
    shutil.rmtree(out, ignore_errors=True)
    argv = ["masks", str(photo), "-o", str(out), "--model", MODEL, "--device", "cpu", "--json"]
    runner = [sys.executable, "-m", "benchmarks.bench_e2e", "--child-cli"]
    hooks = [f"--sam-arch={sam}", "--"]
    if sam == TINY_ARCH:  # the decoder stand-in goes with the tiny SAM
        hooks.insert(0, f"--controlled={shape[0]}x{shape[1]}")
    cmd = [*runner, *hooks, *argv, *CASES[name]]
    m = measure(cmd, env=models.env(), logs=work / f"masks-{name}", timeout=timeout)
    result: dict[str, Any] = {
        "case": name,
        "args": CASES[name],
        "status": "ok" if m.returncode == 0 and not m.timed_out else "failed",
        "peak_rss_bytes": m.peak_rss_bytes,
        "wall_s": m.wall_s,
        "cpu_s": m.cpu_s,
    }
    if result["status"] != "ok":
        result["error"] = "timed out" if m.timed_out else m.last_error()
        return result
    record = json.loads(m.stdout.read_text().strip().splitlines()[-1])
    result.update(masks=record["masks"], groups=record["groups"], outputs=record["outputs"])
    return result


def run_stock(shape: tuple[int, int], sam: str) -> dict[str, Any]:
    """The stock generator + segmask on the same photo, in its own process (bench_masks)."""
    from benchmarks.bench_masks import _spawn

    scenario = "controlled" if sam == TINY_ARCH else "vitb"
    try:
        r = _spawn("stock", scenario, shape, 32, 0)
    except subprocess.CalledProcessError as exc:
        return {"case": "stock", "args": [], "status": "failed", "error": str(exc),
                "peak_rss_bytes": 0, "wall_s": 0.0}  # fmt: skip
    return {
        "case": "stock",
        "args": ["(segment-anything generator + segmask, no files)"],
        "status": "ok",
        "peak_rss_bytes": int(r["peak_rss_gb"] * GB),
        "wall_s": r["process_s"],
        "masks": r["masks"],
        "groups": r["segmask_values"],
    }


def table(results: list[dict[str, Any]]) -> str:
    """Markdown: one row per case, peak RSS and its ratio to segmask alone, and the
    speed-up over the stock generator when it ran."""
    base = next((r["peak_rss_bytes"] for r in results if r["case"] == "segmask"), 0)
    stock = next((r["wall_s"] for r in results if r["case"] == "stock" and r["wall_s"]), 0.0)
    rows = []
    for r in results:
        ratio = f"{r['peak_rss_bytes'] / base:.2f}x" if base and r["status"] == "ok" else "-"
        rows.append(
            [
                r["case"],
                " ".join(r["args"]) or "(default: segmask,npz,overlay)",
                r.get("masks", "-"),
                r.get("groups", "-"),
                f"{r['peak_rss_bytes'] / GB:.2f}",
                ratio,
                f"{r['wall_s']:.1f}",
                f"{stock / r['wall_s']:.1f}x" if stock and r["wall_s"] else "-",
                r.get("error", "ok"),
            ]
        )
    headers = [
        "case", "options", "masks", "groups", "peak RSS GB", "vs segmask", "wall s",
        "vs stock", "",
    ]  # fmt: skip
    return markdown_table(headers, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="3000x4000", help="H x W of the photo (12 MP)")
    parser.add_argument("--cases", default="segmask,default", help=f"of {', '.join(CASES)}")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds per case")
    parser.add_argument("--stock", action="store_true", help="also time the stock generator")
    parser.add_argument(
        "--sam", choices=("tiny", "vit_b"), default="tiny", help="tiny + stand-in, or ViT-B"
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    args = parser.parse_args(argv)
    h, w = (int(v) for v in args.size.lower().split("x"))
    names = [n.strip() for n in args.cases.split(",") if n.strip()]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        parser.error(f"unknown case {', '.join(unknown)}; use {', '.join(CASES)}")
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-masks-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        shutil.rmtree(work / "models", ignore_errors=True)
        (work / "models").mkdir()
        sam = TINY_ARCH if args.sam == "tiny" else "vit_b"
        models = prepare_models(
            work / "models", sam_arch=sam, nets={MODEL: TINY_NET}, amg=stock_amg()
        )
        photo = write_photo(work / "photo.png", (h, w))
        results = []
        if args.stock:
            results.append(run_stock((h, w), sam))
            print(table(results[-1:]), flush=True)
        for name in names:
            results.append(run_case(models, photo, (h, w), name, work, args.timeout, sam))
            print(table(results[-1:]), flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    report = table(results)
    sizes = {r["case"]: r["peak_rss_bytes"] for r in results if r["status"] == "ok"}
    ratio = sizes["default"] / sizes["segmask"] if {"default", "segmask"} <= set(sizes) else None
    print()
    print(f"## `sam-deblur masks` peak memory, {h} x {w} ({h * w / 1e6:.0f} MP)\n")
    print(report)
    if ratio is not None:
        verdict = "meets" if ratio <= TARGET else "misses"
        print(f"\ndefault / segmask = {ratio:.2f} ({verdict} the {TARGET}x target)")
    write_json(args.json, {"shape": [h, w], "cases": results, "ratio_default": ratio})
    return 0 if all(r["status"] == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
