"""A bounded load test for ``sam-deblur serve`` on loopback: many concurrent uploads against
a small queue, ``/api/health`` polled throughout, memory and the temp folder checked after.

Used by ``test_faults_serve.py`` (a small run) and ``benchmarks/faults.py --long``.
"""

from __future__ import annotations

import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class LoadResult:
    """What the clients saw and what the server left behind."""

    statuses: Counter[int] = field(default_factory=Counter)
    missing_retry_after: int = 0  # 503 answers without a Retry-After header
    errors: list[str] = field(default_factory=list)  # transport errors (no answer at all)
    latencies: list[float] = field(default_factory=list)  # seconds, every answered upload
    ok_latencies: list[float] = field(default_factory=list)  # seconds, 200 answers
    health: list[float] = field(default_factory=list)  # seconds per /api/health during load
    rss_warm: int = 0  # bytes, after one request
    rss_after: int = 0  # bytes, after the load
    temp_left: list[str] = field(default_factory=list)
    wall: float = 0.0

    def summary(self) -> dict[str, Any]:
        def pct(values: list[float], q: float) -> float | None:
            if not values:
                return None
            ordered = sorted(values)
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

        return {
            "requests": sum(self.statuses.values()) + len(self.errors),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "no_answer": len(self.errors),
            "missing_retry_after": self.missing_retry_after,
            "p50_s": pct(self.latencies, 0.5),
            "p99_s": pct(self.latencies, 0.99),
            "ok_p50_s": pct(self.ok_latencies, 0.5),
            "ok_p99_s": pct(self.ok_latencies, 0.99),
            "health_polls": len(self.health),
            "health_max_s": round(max(self.health), 3) if self.health else None,
            "health_median_s": round(statistics.median(self.health), 4) if self.health else None,
            "rss_warm_mb": round(self.rss_warm / 2**20, 1),
            "rss_after_mb": round(self.rss_after / 2**20, 1),
            "temp_left": len(self.temp_left),
            "wall_s": round(self.wall, 2),
        }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def rss(pid: int) -> int:
    """Resident memory of ``pid`` in bytes (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


class Server:
    """``sam-deblur serve`` in a child process, its temp folder under ``tmp``."""

    def __init__(self, env: dict[str, str], tmp: Path, *argv: str) -> None:
        self.port, self.tmp = free_port(), tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sam_deblur_cli", "serve", "--port", str(self.port), *argv],
            env={**env, "TMPDIR": str(tmp)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 120) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if httpx.get(f"{self.url}/api/health", timeout=5).json()["status"] == "ready":
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.2)
        raise AssertionError(f"the server never got ready: {self.stop()}")

    def temp_entries(self) -> list[str]:
        """Everything inside the server's private temp folder(s)."""
        return sorted(
            str(p.relative_to(self.tmp))
            for root in self.tmp.glob("sam-deblur-serve-*")
            for p in root.rglob("*")
        )

    def stop(self) -> str:
        """Terminate; returns what it wrote on stderr."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err.decode(errors="replace")


def run_load(
    server: Server,
    photo: bytes,
    *,
    clients: int = 16,
    rounds: int = 2,
    limit: float = 120,
    form: dict[str, str] | None = None,
) -> LoadResult:
    """``clients`` threads each POST ``photo`` (and the ``form`` fields) to /api/deblur
    ``rounds`` times at once, while another polls /api/health every 50 ms; stops by itself
    after ``limit`` seconds at most."""
    import httpx

    result = LoadResult()
    lock, done = threading.Lock(), threading.Event()
    files = {"file": ("photo.png", photo, "image/png")}
    with httpx.Client(timeout=limit) as warm:  # warm-up: one request, then the warm level
        assert warm.post(f"{server.url}/api/deblur", files=files, data=form).status_code == 200
    result.rss_warm = rss(server.proc.pid)
    start = threading.Barrier(clients + 1)
    deadline = time.monotonic() + limit

    def client() -> None:
        with httpx.Client(timeout=limit) as http:
            start.wait()
            for _ in range(rounds):
                if time.monotonic() > deadline:
                    return
                t0 = time.perf_counter()
                try:
                    reply = http.post(f"{server.url}/api/deblur", files=files, data=form)
                except httpx.HTTPError as exc:
                    with lock:
                        result.errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                elapsed = time.perf_counter() - t0
                with lock:
                    result.statuses[reply.status_code] += 1
                    result.latencies.append(elapsed)
                    if reply.status_code == 200:
                        result.ok_latencies.append(elapsed)
                    if reply.status_code == 503 and "retry-after" not in reply.headers:
                        result.missing_retry_after += 1

    def poll_health() -> None:
        with httpx.Client(timeout=limit) as http:
            while not done.is_set():
                t0 = time.perf_counter()
                try:
                    http.get(f"{server.url}/api/health").raise_for_status()
                except httpx.HTTPError as exc:
                    with lock:
                        result.errors.append(f"health: {exc}")
                result.health.append(time.perf_counter() - t0)
                done.wait(0.05)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    health = threading.Thread(target=poll_health, daemon=True)
    for thread in [*threads, health]:
        thread.start()
    t0 = time.perf_counter()
    start.wait()
    for thread in threads:
        thread.join(max(1.0, deadline - time.monotonic() + 30))
    result.wall = time.perf_counter() - t0
    done.set()
    health.join(30)
    settle = time.monotonic() + 10  # the last job's folder goes as its answer is sent
    while (left := server.temp_entries()) and time.monotonic() < settle:
        time.sleep(0.1)
    result.temp_left = left
    result.rss_after = rss(server.proc.pid)
    return result


def photo_bytes(size: int, seed: int = 0) -> bytes:
    """A ``size`` x ``size`` PNG of a real photo (scikit-image's astronaut, resized)."""
    import io

    from PIL import Image
    from skimage import data

    image = Image.fromarray(data.astronaut()).resize((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
