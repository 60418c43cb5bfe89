"""Fault injection for child ``sam-deblur`` processes: kill -9 at chosen points, a file-size
limit, a tiny file system; and comparison of output trees.

A child gets its faults through its environment, read by a ``sitecustomize`` module that
this helper writes (``SAM_DEBLUR_FAULT_KILL_AT_FSYNC=N``: SIGKILL itself just before the
N-th fsync of a regular file, i.e. with that file written in full but not yet renamed).
The code under test is never replaced; the process dies as an OOM kill would make it die.
"""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from tiny_models import TinyEnv, console_script, tree_hashes

SITECUSTOMIZE = """
import os

if os.environ.get("SAM_DEBLUR_FAULT_TINY_SAM"):
    from tiny_sam import register_tiny_sam

    register_tiny_sam()

_kill_at = int(os.environ.get("SAM_DEBLUR_FAULT_KILL_AT_FSYNC", "0"))
if _kill_at:
    import signal
    import stat

    _real_fsync, _count = os.fsync, [0]

    def _fsync(fd):
        if stat.S_ISREG(os.fstat(fd).st_mode):
            _count[0] += 1
            if _count[0] == _kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
        return _real_fsync(fd)

    os.fsync = _fsync
"""


def fault_env(
    env: TinyEnv, *, tiny_sam: bool = False, kill_at_fsync: int = 0, **extra: str
) -> dict[str, str]:
    """``env``'s child environment with the fault hooks installed."""
    site = env.root / "fault-site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    child = env.subprocess_env(tiny_sam=False)
    child["PYTHONPATH"] = os.pathsep.join([str(site), child["PYTHONPATH"]])
    child.pop("SAM_DEBLUR_FAULT_TINY_SAM", None)
    if tiny_sam:
        child["SAM_DEBLUR_FAULT_TINY_SAM"] = "1"
    child["SAM_DEBLUR_FAULT_KILL_AT_FSYNC"] = str(kill_at_fsync)
    child.update(extra)
    return child


def file_size_limit(limit: int) -> Callable[[], None]:
    """A ``preexec_fn``: RLIMIT_FSIZE of ``limit`` bytes, SIGXFSZ ignored (writes past the
    limit then fail with EFBIG instead of killing the process)."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def sam_deblur(
    argv: Sequence[str | Path],
    env: dict[str, str],
    *,
    timeout: float = 240,
    preexec_fn: Callable[[], None] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the console script to its end."""
    return subprocess.run(
        [str(console_script()), *map(str, argv)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        preexec_fn=preexec_fn,
    )


def kill_when(
    argv: Sequence[str | Path],
    env: dict[str, str],
    ready: Callable[[], bool],
    *,
    delay: float = 0.0,
    timeout: float = 240,
) -> int:
    """Start ``sam-deblur ARGV``; SIGKILL it ``delay`` seconds after ``ready()`` first holds
    (polled), unless it ended before. Returns its exit status (-9 when killed)."""
    child = subprocess.Popen(
        [str(console_script()), *map(str, argv)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout
    try:
        while child.poll() is None and not ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{argv} never reached its kill point")
            time.sleep(0.01)
        time.sleep(delay)
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
        return child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def count_files(folder: Path, suffix: str = "") -> Callable[[], int]:
    """How many visible (not hidden) files end with ``suffix`` in ``folder``, recursively."""

    def count() -> int:
        if not folder.exists():
            return 0
        found = 0
        for path in folder.rglob(f"*{suffix}"):
            rel = path.relative_to(folder)
            if not any(part.startswith(".") for part in rel.parts) and path.is_file():
                found += 1
        return found

    return count


def all_entries(folder: Path) -> list[str]:
    """Every file and folder under ``folder``, hidden ones included, relative and sorted."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def same_tree(a: Path, b: Path) -> bool:
    """``a`` and ``b`` hold the same names (hidden ones included) with the same bytes."""
    ha = {p.relative_to(a): h for p, h in tree_hashes(a).items()}
    hb = {p.relative_to(b): h for p, h in tree_hashes(b).items()}
    return ha == hb and all_entries(a) == all_entries(b)


def seeded_delays(seed: int, count: int, top: float) -> list[float]:
    """``count`` kill delays in [0, ``top``) seconds, the same for the same ``seed``."""
    rng = random.Random(seed)
    return [rng.uniform(0, top) for _ in range(count)]


LONG = os.environ.get("SAM_DEBLUR_FAULTS_LONG") == "1"  # benchmarks/faults.py --long


def report(entry: dict[str, object]) -> None:
    """Append ``entry`` to ``$SAM_DEBLUR_FAULTS_REPORT`` (JSON lines), when it is set."""
    path = os.environ.get("SAM_DEBLUR_FAULTS_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")
