"""Seeded mutation corpora: truncated, bit-flipped, zeroed, spliced and repeated copies of
every kind of file the tool reads (images in five formats and headers claiming 60000 x 60000
pixels, segmask PNGs and groups .npz, MP4/MKV/WebM, .pth/.safetensors, weights.toml and the
local model manifest, training datasets with a damaged pair).

Each case ends in "ok" (the damage left a readable file) or the library's own error with
one line and a documented exit code: never another exception, never a hang (a per-case
limit), never an output for an input that failed. The bulk runs at the library level in a
child process (``mutations.py``); a sample goes through the console script.
``SAM_DEBLUR_FAULTS_LONG=1`` (``benchmarks/faults.py --long``) runs thousands.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from faults import LONG, all_entries, fault_env, report, sam_deblur
from mutations import TESTS_DIR, mutate
from tiny_models import TinyEnv, save_photo

COUNTS = {"image": 60, "mask": 60, "video": 40, "checkpoint": 60, "manifest": 60, "dataset": 20}
EXPECTED = {  # the error family each kind's reader raises
    "image": {"ImageReadError", "PixelLimitError"},
    "mask": {"MaskError"},
    "video": {"VideoError"},
    "checkpoint": {"CheckpointError"},
    "manifest": {"SetupError"},
    "dataset": set(),  # bad pairs become issue lines; the reader itself never raises
}


@pytest.fixture(scope="module", name="corpora")
def corpora_fixture(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """Every kind's cases, run once in one child process: results by kind."""
    work = tmp_path_factory.mktemp("corpora")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR.parent), str(TESTS_DIR)])
    scale = 50 if LONG else 1
    kinds = ",".join(f"{kind}:{count * scale}" for kind, count in COUNTS.items())
    argv = [sys.executable, str(TESTS_DIR / "mutations.py"), "--kinds", kinds]
    argv += ["--seed", "23", "--work", str(work)]
    done = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=300 * scale, check=False
    )
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    started = [line["start"] for line in lines if "start" in line]
    assert done.returncode == 0, f"died on {started[-1] if started else '?'}: {done.stderr}"
    by_kind: dict[str, list[dict[str, Any]]] = {kind: [] for kind in COUNTS}
    for line in lines:
        if "outcome" in line:
            by_kind[line["kind"]].append(line)
    return by_kind


@pytest.mark.subprocess
@pytest.mark.parametrize("kind", list(COUNTS))
def test_damaged_files_end_in_one_line_and_a_documented_exit_code(
    kind: str, corpora: dict[str, list[dict[str, Any]]]
) -> None:
    results = corpora[kind]
    assert len(results) >= COUNTS[kind] * (50 if LONG else 1)
    outcomes = Counter(r["outcome"] for r in results)
    for r in results:
        assert r["outcome"] in {"ok"} | EXPECTED[kind], r
        if r["outcome"] != "ok":
            assert r["exit_code"] in (1, 2) and "\n" not in r["message"], r
        for issue in r.get("issues", []):
            assert "\n" not in issue and "Traceback" not in issue, r
    failed = sum(n for name, n in outcomes.items() if name != "ok")
    issues = sum(bool(r.get("issues")) for r in results)
    assert failed + issues >= len(results) // 4, outcomes  # the damage was real
    report(
        {
            "corpus": kind,
            "cases": len(results),
            "outcomes": dict(outcomes),
            "with_issues": issues,
            "max_case_s": max(r["seconds"] for r in results),
        }
    )


@pytest.mark.subprocess
def test_a_batch_of_damaged_files_fails_each_in_one_line_and_writes_only_the_good(
    tiny_env: TinyEnv, tmp_path: Path
) -> None:
    """The console script over a sample: a failed input gets one line and no output."""
    from video_clips import blurred_frames, make_clip

    from sam_deblur_cli.errors import SamDeblurError
    from sam_deblur_cli.imageio import read_image

    src, out = tmp_path / "in", tmp_path / "out"
    good = save_photo(src / "good.png").read_bytes()
    jpeg = save_photo(tmp_path / "seed.jpg").read_bytes()
    rng = random.Random(23)
    readable = {"good.png"}
    for index in range(8):
        name = f"bad{index}.{'png' if index % 2 else 'jpg'}"
        data = mutate(good if index % 2 else jpeg, rng)[1]
        (src / name).write_bytes(data)
        try:
            read_image(src / name)
            readable.add(name)
        except SamDeblurError:
            pass
    make_clip(tmp_path / "clip.mp4", blurred_frames(3))
    (src / "clip.mp4").write_bytes((tmp_path / "clip.mp4").read_bytes()[:2000])  # truncated
    argv = ["batch", src, "-o", out, "--model", "nafnet-gopro", "--no-tlc", "--device", "cpu"]
    done = sam_deblur(argv, fault_env(tiny_env))
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    failed = [line for line in done.stderr.splitlines() if line.startswith("failed: ")]
    assert len(failed) == 9 - len(readable) + 1  # the unreadable images and the clip
    assert all_entries(out) == sorted(readable)
