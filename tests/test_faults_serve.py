"""``sam-deblur serve`` under load: a queue of 2, 16 concurrent uploads, on loopback.

Every upload is answered (200, or 503 with Retry-After; no other status and no dropped
connection), /api/health answers in under a second throughout (inference runs off the event
loop), memory comes back near its warm level and the private temp folder is empty after.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from faults import LONG, fault_env, report
from serve_load import Server, photo_bytes, run_load
from tiny_models import TinyEnv

pytest.importorskip("uvicorn", reason="the serve extra (uvicorn) is not installed")
pytest.importorskip("httpx", reason="httpx (the load test's client) is not installed")
pytestmark = pytest.mark.subprocess


def test_a_queue_of_2_under_16_concurrent_uploads_answers_every_request(
    tiny_env: TinyEnv, tmp_path: Path
) -> None:
    server = Server(
        fault_env(tiny_env, tiny_sam=True), tmp_path / "tmp", "--queue", "2", "--device", "cpu"
    )
    try:
        server.wait_ready()
        rounds = 8 if LONG else 2
        load = {"clients": 16, "rounds": rounds, "limit": 600.0, "form": {"tlc": "false"}}
        result = run_load(server, photo_bytes(128), **load)  # type: ignore[arg-type]
        summary = result.summary()
        report({"serve_load": summary})
        assert result.errors == [], result.errors
        assert set(result.statuses) <= {200, 503} and result.statuses[200] >= 3, summary
        assert result.statuses[503] > 0 and result.missing_retry_after == 0, summary
        assert sum(result.statuses.values()) == 16 * rounds
        assert max(result.health) < 1.0, summary
        assert result.temp_left == [], result.temp_left
        assert result.rss_after < result.rss_warm + 200 * 2**20, summary
    finally:
        err = server.stop()
    assert "Traceback" not in err, err
    assert server.temp_entries() == []
