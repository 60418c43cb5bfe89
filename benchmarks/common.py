"""Helpers shared by the benchmark scripts: timing, peak memory of one stage, reporting.

Peak memory is measured in a fresh child process per stage, so one stage's allocations
(or the allocator's cached pages) never count against another: the child resets its
peak-RSS counter after its set-up, runs the stage, and reports VmHWM growth.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MB = 1 << 20


def _status_bytes(key: str) -> int:
    """A ``VmRSS`` / ``VmHWM`` line of /proc/self/status, in bytes (0 where unsupported)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclass
class PeakMeter:
    """Peak resident memory above the level at entry; filled in when the block ends."""

    baseline: int = 0
    peak_bytes: int = field(default=0)


@contextmanager
def peak_rss() -> Iterator[PeakMeter]:
    """Measure the peak RSS growth of the enclosed block (Linux; resets VmHWM on entry).

    Use it inside a child process (``in_child``): resetting the counter is process-wide.
    """
    meter = PeakMeter(baseline=_status_bytes("VmRSS"))
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # "5" resets the peak RSS to the current RSS
    except OSError:
        pass
    yield meter
    meter.peak_bytes = max(0, _status_bytes("VmHWM") - meter.baseline)


def _child_main(queue: Any, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        queue.put(("ok", fn(*args)))
    except BaseException as exc:  # reported to the parent, which re-raises
        queue.put(("error", f"{type(exc).__name__}: {exc}"))


def in_child(fn: Callable[..., Any], *args: Any, timeout: float = 3600) -> Any:
    """Run ``fn(*args)`` in a fresh spawned process and return its (picklable) result."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child_main, args=(queue, fn, args))
    proc.start()
    try:
        status, value = queue.get(timeout=timeout)
    finally:
        proc.join(timeout=60)
    if status != "ok":
        raise RuntimeError(f"benchmark stage {getattr(fn, '__name__', fn)} failed: {value}")
    return value


def time_it(fn: Callable[[], Any], *, repeat: int = 3, warmup: int = 1) -> dict[str, float]:
    """Best and median wall time of ``fn()`` in seconds over ``repeat`` runs after warm-up."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"best_s": min(times), "median_s": statistics.median(times)}


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: Path | None, data: object) -> None:
    """Write ``data`` as indented JSON when ``path`` is given."""
    if path is not None:
        path.write_text(json.dumps(data, indent=2) + "\n")


def mem_available_bytes() -> int:
    """MemAvailable from /proc/meminfo (0 where unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
