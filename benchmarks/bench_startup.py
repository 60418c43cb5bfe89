"""CLI start-up time: `sam-deblur --help` versus a CLI that imports its stack eagerly.

The "stock" side is what a naive CLI pays before it can print help: importing torch and
segment_anything at module level. Both are timed as fresh interpreter processes, best of N.

    python -m benchmarks.bench_startup [--repeat 5] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

OURS = [sys.executable, "-m", "sam_deblur_cli", "--help"]
EAGER = [sys.executable, "-c", "import torch, segment_anything; import sam_deblur_cli.cli"]


def best_of(cmd: list[str], repeat: int) -> float:
    """Best wall time in seconds of `repeat` fresh runs of `cmd` (output discarded)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return min(times)


def run(repeat: int = 5) -> dict[str, float]:
    """Return {"ours_s", "eager_s", "ratio"} for `sam-deblur --help`."""
    ours = best_of(OURS, repeat)
    eager = best_of(EAGER, repeat)
    return {"ours_s": ours, "eager_s": eager, "ratio": ours / eager}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    result = run(args.repeat)
    print("| stage | stock (eager imports) | ours | ours/stock |")
    print("|---|---|---|---|")
    print(
        f"| `sam-deblur --help` | {result['eager_s']:.2f} s | {result['ours_s']:.2f} s "
        f"| {result['ratio']:.2f} |"
    )
    if args.json:
        args.json.write_text(json.dumps({"startup": result}, indent=2))


if __name__ == "__main__":
    main()
