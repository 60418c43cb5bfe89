"""The fault suite at full size, with its figures: kill -9 at many points, disk full, the
serve load test, thousands of damaged files, concurrent runs.

    python -m benchmarks.faults [--long] [--json PATH]

Runs ``tests/test_faults_*.py`` with pytest (``--long``: ``SAM_DEBLUR_FAULTS_LONG=1``,
15 kill points instead of 2, 50 times the mutation corpora, 8 upload rounds instead of 2)
and prints one Markdown summary of what the tests recorded (the README's "Reliability"
figures). Not a timing benchmark: a pass/fail run that also counts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def run(long: bool) -> tuple[int, list[dict[str, Any]], float]:
    """(pytest's exit status, the recorded entries, seconds)."""
    with tempfile.TemporaryDirectory(prefix="sam-deblur-faults-") as folder:
        report = Path(folder) / "report.jsonl"
        env = {**os.environ, "SAM_DEBLUR_FAULTS_REPORT": str(report)}
        if long:
            env["SAM_DEBLUR_FAULTS_LONG"] = "1"
        tests = sorted(str(p) for p in (REPO / "tests").glob("test_faults_*.py"))
        started = time.perf_counter()
        status = subprocess.call([sys.executable, "-m", "pytest", "-q", *tests], env=env, cwd=REPO)
        seconds = time.perf_counter() - started
        entries = (
            [json.loads(line) for line in report.read_text().splitlines()]
            if report.exists()
            else []
        )
    return status, entries, seconds


def summary(entries: list[dict[str, Any]]) -> str:
    """Markdown: kill points, disk-full lines, corpora outcomes, the load test."""
    lines = ["| fault | cases | outcome |", "|---|---:|---|"]
    kills = [e for e in entries if "kill" in e]
    if kills:
        same = sum(e["rerun"] == "same" for e in kills)
        lines.append(
            f"| kill -9, then rerun | {len(kills)} | "
            f"{same} reruns byte-identical to an unbroken run |"
        )
    for e in (e for e in entries if "disk" in e):
        lines.append(f"| {e['disk']} | 1 | exit {e['exit']}: `{e['line']}` |")
    for e in (e for e in entries if "corpus" in e):
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(e["outcomes"].items()))
        extra = f", {e['with_issues']} with issue lines" if e.get("with_issues") else ""
        lines.append(
            f"| damaged {e['corpus']} files | {e['cases']} | {outcomes}{extra}; "
            f"slowest {e['max_case_s']} s |"
        )
    for e in (e["serve_load"] for e in entries if "serve_load" in e):
        statuses = ", ".join(f"{k}: {v}" for k, v in e["statuses"].items())
        lines.append(
            f"| serve, queue 2, 16 clients | {e['requests']} | {statuses}; no answer "
            f"{e['no_answer']}; p50 {e['p50_s']} s, p99 {e['p99_s']} s (200s: p50 "
            f"{e['ok_p50_s']} s, p99 {e['ok_p99_s']} s); health max {e['health_max_s']} s over "
            f"{e['health_polls']} polls; RSS {e['rss_warm_mb']} -> {e['rss_after_mb']} MB; "
            f"temp files left {e['temp_left']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--long", action="store_true", help="thousands of cases (minutes)")
    parser.add_argument("--json", type=Path, help="also write the recorded entries here")
    args = parser.parse_args(argv)
    status, entries, seconds = run(args.long)
    print(
        f"\n## Fault suite ({'long' if args.long else 'suite size'}): "
        f"pytest exit {status}, {seconds:.0f} s\n"
    )
    print(summary(entries))
    kinds = Counter(next(iter(e)) for e in entries)
    print(f"\n{sum(kinds.values())} recorded entries: {dict(kinds)}")
    if args.json:
        args.json.write_text(json.dumps(entries, indent=1))
    return status


if __name__ == "__main__":
    sys.exit(main())
