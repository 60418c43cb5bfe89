"""The same folder through the local batch and through `batch --engine ray`: overhead per image.

Model: a random-weight plain NAFNet, width 32, one block per level (``bench-plain``; no SAM,
so the numbers are the engines' cost around one network call, not mask generation). Each
side is the real CLI in a child process with a fresh output folder, the benchmark manifest
and cache; wall time includes start-up (Python, torch, model loading; for Ray also starting
a local Ray instance and its actors). Reported: wall seconds per side, images/s, and Ray's
overhead per image ((ray - local at 1 thread) / images). Ray runs with 1 worker and, on
machines with more than 2 CPUs, with 2. Each worker reserves 1 CPU and so runs torch on 1
thread: its outputs are compared byte for byte with the local run at 1 thread, and the
differences from the local run at torch's default thread count (float summation order) are
counted.

    python -m benchmarks.bench_ray [--quick] [--images N] [--size PX] [--json PATH]

``--quick``: 8 images of 128 x 128 (under a minute on 2 cores); default: 32 of 256 x 256.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import markdown_table, write_json

REPO = Path(__file__).resolve().parents[1]
LOCAL_1 = "local, 1 thread"
NET = {"width": 32, "enc_blk_nums": [1, 1, 1, 1], "middle_blk_num": 1, "dec_blk_nums": [1, 1, 1, 1]}
MANIFEST = """schema = 1

[models.bench-plain]
kind = "deblur"
license = "Apache-2.0"
homepage = "https://github.com/HPLQAQ/SAM-Deblur"
source = {{ page = "https://example.invalid/benchmark", file = "plain.pth" }}
tlc = false
net = {{ variant = "plain", {arch} }}
"""


def prepare(root: Path, images: int, size: int) -> dict[str, str]:
    """Photos under root/in (two sub-folders), the model imported; returns the child env."""
    import numpy as np
    import torch
    from PIL import Image
    from skimage import data, transform

    from sam_deblur_cli.nets import NetConfig, build_network

    torch.manual_seed(0)
    net = build_network(
        NetConfig(
            variant="plain", **{k: tuple(v) if isinstance(v, list) else v for k, v in NET.items()}
        )
    )  # type: ignore[arg-type]
    torch.save({"params": net.state_dict()}, root / "plain.pth")
    arch = ", ".join(f"{k} = {json.dumps(v)}" for k, v in NET.items())
    (root / "weights.toml").write_text(MANIFEST.format(arch=arch))
    photo = (transform.resize(data.astronaut(), (size, size)) * 255).astype(np.uint8)
    for index in range(images):
        path = root / "in" / f"part{index % 2}" / f"img{index:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.roll(photo, index * 7, axis=1)).save(path)
    env = dict(os.environ)
    env.update(SAM_DEBLUR_WEIGHTS=str(root / "weights.toml"), SAM_DEBLUR_HOME=str(root / "home"))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    _cli(env, ["weights", "import", "bench-plain", str(root / "plain.pth")])
    return env


def _cli(env: dict[str, str], argv: list[str]) -> float:
    """Run ``sam-deblur ARGV`` in a child; returns its wall seconds (exit 0 required)."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "sam_deblur_cli", *argv], env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(
            f"sam-deblur {' '.join(argv)} exited {proc.returncode}: {proc.stderr[-2000:]}"
        )
    return seconds


def run(images: int, size: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        root = Path(tmp)
        env = prepare(root, images, size)
        base = ["batch", str(root / "in"), "-r", "-m", "bench-plain", "--device", "cpu", "-q"]
        # A Ray worker reserves 1 CPU, so Ray sets OMP_NUM_THREADS=1 in it: the local run at
        # one thread is the like-for-like baseline (same work, same float summation order).
        rows: dict[str, float] = {
            "local": _cli(env, [*base, "-o", str(root / "local")]),
            LOCAL_1: _cli({**env, "OMP_NUM_THREADS": "1"}, [*base, "-o", str(root / "local1")]),
        }
        widths = [1] if (os.cpu_count() or 1) <= 2 else [1, 2]
        for workers in widths:
            out = str(root / f"ray{workers}")
            ray = ["--engine", "ray", "--workers", str(workers), "--gpus-per-worker", "0"]
            rows[f"ray, {workers} worker(s)"] = _cli(env, [*base, "-o", out, *ray])
        same = all(_diff(root / "local1", root / f"ray{w}") == (0, 0) for w in widths)
        levels, pixels = _diff(root / "local", root / "ray1")
    base_s = rows[LOCAL_1]
    return {
        "images": images,
        "size": size,
        "cpus": os.cpu_count(),
        "identical_outputs": same,
        "default_threads_diff": {"max_levels": levels, "pixels": pixels},
        "seconds": rows,
        "images_per_s": {name: images / s for name, s in rows.items()},
        "overhead_per_image_s": {
            name: (s - base_s) / images for name, s in rows.items() if name.startswith("ray")
        },
    }


def _diff(a: Path, b: Path) -> tuple[int, int]:
    """Largest difference (8-bit levels) and differing pixel values between two trees' PNGs."""
    import numpy as np
    from PIL import Image

    worst = count = 0
    for path in a.rglob("*.png"):
        x = np.asarray(Image.open(path), dtype=np.int16)
        y = np.asarray(Image.open(b / path.relative_to(a)), dtype=np.int16)
        worst, count = max(worst, int(np.abs(x - y).max())), count + int((x != y).sum())
    return worst, count


def table(result: dict[str, Any]) -> str:
    """Wall seconds, images/s and Ray's overhead per image of each engine (Markdown)."""
    rows = [
        [
            name,
            f"{seconds:.1f}",
            f"{result['images_per_s'][name]:.2f}",
            f"{result['overhead_per_image_s'][name]:+.2f}" if name.startswith("ray") else "-",
        ]
        for name, seconds in result["seconds"].items()
    ]
    return markdown_table(["engine", "wall s", "images/s", "overhead s/image"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--images", type=int)
    parser.add_argument("--size", type=int)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    images = args.images or (8 if args.quick else 32)
    size = args.size or (128 if args.quick else 256)
    result = run(images, size)
    diff = result["default_threads_diff"]
    print(
        f"{images} images of {size} x {size}, {result['cpus']} CPUs; Ray's outputs identical "
        f"to the local run at 1 thread: {result['identical_outputs']}; against the local run "
        f"at torch's default threads: {diff['pixels']} values differ, by at most "
        f"{diff['max_levels']} level(s)"
    )
    print(table(result))
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
