"""The benchmark entry point runs end to end in its tiny ``--smoke`` mode (no timing checks)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SECTIONS = (
    "## Machine",
    "## Mask stage",
    "## MAP",
    "## Network",
    "## End to end",
    "## Start-up",
    "## Cold start",
    "## Steady-state mask generation",
    "## Video",
    "## Training step",
    "## Batch overlap",
    "## Time to result, models loaded once",
    "## Ray batch",
)


def _bench(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "benchmarks", *args, "--logs", str(tmp_path / "logs")]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.mark.subprocess
def test_smoke_run_writes_report_and_json(tmp_path: Path) -> None:
    out_json, out_md = tmp_path / "bench.json", tmp_path / "bench.md"
    proc = _bench(tmp_path, "--smoke", "--json", str(out_json), "--out-md", str(out_md))
    assert proc.returncode == 0, proc.stderr[-2000:]

    data = json.loads(out_json.read_text())
    assert data["mode"] == "smoke" and data["device"] == "cpu"
    assert data["machine"]["cores"] >= 1 and data["machine"]["ram_bytes"] > 0
    comps = data["components"]
    assert set(comps) == {
        "masks",
        "map",
        "network",
        "e2e",
        "startup",
        "cold",
        "steady",
        "video",
        "train",
        "overlap",
        "throughput",
        "ray",
    }
    skipped = ("masks", "network", "startup", "cold", "steady", "video", "train", "ray")
    assert {comps[k]["status"] for k in skipped} == {"skipped"}
    assert comps["e2e"]["status"] == "ok", comps["e2e"].get("error")

    [case] = comps["e2e"]["result"]["cases"]
    ours, stock = case["ours"], case["stock"]
    assert ours["status"] == stock["status"] == "ok", (ours.get("error"), stock.get("error"))
    # Controlled logits give both pipelines the same several masks; same weights, same output.
    assert ours["groups"] == stock["groups"] > 1
    assert case["output_diff"]["max_abs_diff"] <= 1
    assert ours["peak_rss_bytes"] > 0 and stock["peak_rss_bytes"] > 0
    assert case["ratio_time"] > 0
    # The batch overlap runs too: every variant writes the sequential run's bytes.
    assert comps["overlap"]["status"] == "ok", comps["overlap"].get("error")
    rows = comps["overlap"]["result"]["rows"]
    assert [r["variant"] for r in rows][:2] == ["sequential", "overlapped"]
    assert all(r["identical"] and r["statuses"] == ["ok"] for r in rows)
    # Time to result: a photo, the folder and the video against the stock loop, models loaded.
    assert comps["throughput"]["status"] == "ok", comps["throughput"].get("error")
    rows = {r["row"]: r for r in comps["throughput"]["result"]["rows"]}
    assert list(rows) == ["photo 128x96", "batch", "video, SAM every 1", "video, SAM every 8"]
    assert rows["photo 128x96"]["outputs"]["max_abs_diff"] <= 1  # same weights, same masks
    for side in ("ours", "ours_in_turn"):  # overlapped (the default) and one at a time
        assert rows["batch"][side]["failed"] == [] and rows["batch"][side]["items"] == 3
    assert rows["batch"]["stock"]["items"] == 3  # the budget is far away
    every1, every8 = rows["video, SAM every 1"]["ours"], rows["video, SAM every 8"]["ours"]
    assert every1["items"] == every8["items"] == 4
    assert every1["sam_runs"] == 4 and 1 <= every8["sam_runs"] < 4

    report = out_md.read_text()
    assert all(section in report for section in SECTIONS)
    assert report.strip() in proc.stdout


def test_cuda_refused_clearly_without_gpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.syspath_prepend(str(REPO))  # benchmarks/ is not an installed package
    from benchmarks.run import main

    out_json = tmp_path / "bench.json"
    code = main(["--smoke", "--device", "cuda", "--json", str(out_json), "--logs", str(tmp_path)])
    assert code == 2
    assert "--device cuda needs a CUDA GPU" in capsys.readouterr().err
    assert not out_json.exists() and not list(tmp_path.iterdir())


def _mask_row(scenario: str, shape: list[int], stock_s: float, ours_s: float) -> dict[str, Any]:
    """One bench_masks result row: in-process totals 1 s apart from the whole-process times."""

    def side(process_s: float, segmask_sum: int) -> dict[str, Any]:
        stages = {"encoder": 1.0, "decoder": 2.0, "post": process_s - 4.0}
        seconds = {**stages, "total": process_s - 1.0}
        return {
            "seconds": seconds,
            "cpu_seconds": seconds,
            "peak_rss_gb": 2.0,
            "masks": 300,
            "segmask_sum": segmask_sum,
            "process_s": process_s,
        }

    return {
        "name": scenario,
        "scenario": scenario,
        "shape": shape,
        "points": 32,
        "stock": side(stock_s, 7),
        "ours": side(ours_s, 7 if scenario == "vitb" else 8),
    }


def test_mask_targets_judge_whole_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(REPO))
    from benchmarks.run import render_masks, render_targets

    rows = [
        _mask_row("vitb", [720, 1280], stock_s=101.0, ours_s=51.0),  # 1.98x: just misses
        _mask_row("controlled", [3000, 4000], stock_s=436.0, ours_s=54.0),  # 8.1x
    ]
    comps = {"masks": {"status": "ok", "seconds": 600.0, "result": rows}}
    targets = {
        line.split(" | ")[0].lstrip("| "): line for line in render_targets(comps).split("\n")
    }
    assert (
        "1.98x (32^2 points, whole process) | NO"
        in targets["mask stage >= 2x faster than stock, 720p, random weights"]
    )
    assert (
        "8.07x (32^2 points, whole process) | yes"
        in targets["mask stage >= 5x faster, 12 MP, realistic survivors"]
    )
    table = render_masks(rows)
    assert "101.0 / 51.0 (0.50)" in table and "436.0 / 54.0 (0.12)" in table
    assert "SEGMASKS DIFFER" in table  # the controlled row's segmasks were made to differ


def _throughput_result(device: str) -> dict[str, Any]:
    """bench_throughput's JSON: a 1080p photo in 0.5 s, batch 4x, video 3.5x and 10x."""

    def rate(value: float) -> dict[str, Any]:
        return {"items": 8, "of": 8, "seconds": 8 / value, "rate": value, "peak_rss_bytes": 1}

    def row(name: str, stock: float, ours: float, **more: Any) -> dict[str, Any]:
        return {"row": name, "unit": "frames/s", "stock": rate(stock), "ours": rate(ours), **more}

    seconds = {"best_s": 0.5, "median_s": 0.55, "peak_rss_bytes": 1}
    photo = {"row": "photo 1920x1080", "unit": "s", "ours": seconds}
    photo["stock"] = {**seconds, "best_s": 2.0, "median_s": 2.1}
    config = {"device": device, "sam_arch": "vit_h", "model": "m", "points_per_side": 32}
    config.update(torch="2.14", loadavg_start=0.5, precision="auto")
    return {
        "config": config,
        "rows": [
            photo,
            {**row("batch", 1.0, 4.0, ours_in_turn=rate(2.0)), "unit": "photos/s"},
            row("video, SAM every 1", 1.0, 3.5),
            row("video, SAM every 8", 1.0, 10.0),
        ],
    }


def test_time_to_result_targets_are_judged_on_cuda_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(REPO))
    from benchmarks.run import render_component, render_targets

    def targets(device: str) -> dict[str, str]:
        comps = {"throughput": {"status": "ok", "seconds": 1, "result": _throughput_result(device)}}
        lines = render_targets(comps).split("\n")
        return {line.split(" | ")[0].lstrip("| "): line for line in lines}

    cuda = targets("cuda")
    assert "0.500 s | yes" in cuda["CUDA: photo 1080p end to end <= 0.6 s (models loaded)"]
    assert "4.00x | NO" in cuda["CUDA: batch photos/s >= 5x the stock loop"]
    every = "CUDA: video frames/s >= 3x the stock loop, SAM every"
    assert "3.50x | yes" in cuda[f"{every} frame"] and "10.00x | yes" in cuda[f"{every} 8th"]
    cpu = targets("cpu")
    assert "4.00x | - (not CUDA)" in cpu["CUDA: batch photos/s >= 5x the stock loop"]
    entry = {"status": "ok", "seconds": 1.0, "result": _throughput_result("cuda")}
    section = render_component("throughput", entry)
    assert "| photo 1920x1080 | s | 2.000 s (2.100) | 0.500 s (0.550) | 4.00x |" in section
    assert "ours one photo at a time: 2.000" in section
    # A row that failed (out of GPU memory, say) is shown as such and judges nothing.
    failed = _throughput_result("cuda")
    failed["rows"][1] = {"row": "batch", "error": "OutOfMemoryError: CUDA out of memory"}
    entry = {"status": "ok", "seconds": 1.0, "result": failed}
    assert "| batch | - |" in render_component("throughput", entry)
    assert "failed: OutOfMemoryError: CUDA out of memory |" in render_component("throughput", entry)
    comps = {"throughput": entry}
    assert "| CUDA: batch photos/s >= 5x the stock loop | n/a | - |" in render_targets(comps)


def test_video_train_ray_sections_render_their_scripts_json(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(REPO))
    from benchmarks.run import render_component, render_targets

    video = {
        "config": {
            "width": 640,
            "height": 360,
            "frames": 6,
            "device": "cpu",
            "cpus": 2,
            "input_flicker": 0.0123,
        },
        "rows": [
            {
                "model": "segnafnet-gopro",
                "masks": "every 4",
                "batch": "auto",
                "frames_per_s": 1.25,
                "sam_runs": 2,
                "flicker": 0.035,
            }
        ],
    }
    side = {"step_s": 0.5, "images_per_s": 16.0, "map_share": 0.25, "peak_gb": 1.5}
    train = {
        "args": {"width": 16, "batch": 8, "size": 128, "precision": "fp32"},
        "results": {"upstream-style": {**side, "step_s": 1.0}, "ours": side},
    }
    ray = {
        "images": 8,
        "size": 128,
        "cpus": 2,
        "identical_outputs": True,
        "seconds": {"local": 10.0, "local, 1 thread": 12.0, "ray, 1 worker(s)": 18.0},
        "images_per_s": {"local": 0.8, "local, 1 thread": 0.67, "ray, 1 worker(s)": 0.44},
        "overhead_per_image_s": {"ray, 1 worker(s)": 0.75},
    }
    sections = {
        key: render_component(key, {"status": "ok", "seconds": 1.0, "result": result})
        for key, result in (("video", video), ("train", train), ("ray", ray))
    }
    assert "layout not recognised" not in "".join(sections.values())
    assert "| segnafnet-gopro | every 4 | auto | 1.25 | 2 | 0.0350 |" in sections["video"]
    assert "(the input's: 0.0123)" in sections["video"]
    assert "step ours/upstream-style 0.50" in sections["train"]
    assert "| ours | 0.500 | 16.00 | 25.0% | 1.50 GB |" in sections["train"]
    assert "| ray, 1 worker(s) | 18.0 | 0.44 | +0.75 |" in sections["ray"]
    assert "| local, 1 thread | 12.0 | 0.67 | - |" in sections["ray"]
    # The later components do not count against the first five's time target.
    comps = {"ray": {"status": "ok", "seconds": 600.0, "result": ray}}
    assert "0.0 min | yes" in render_targets(comps, "quick")


def test_component_needing_a_missing_package_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(REPO))
    from benchmarks.run import Component, Options, run_component

    comp = Component(
        "x", "X", "benchmarks.bench_ray", lambda o: [], {}, needs="no_such_package_for_sure"
    )
    entry = run_component(comp, Options("quick", False, "cpu"), tmp_path)
    assert entry == {
        "status": "skipped",
        "error": "needs no_such_package_for_sure, which is not installed",
    }
    assert not list(tmp_path.iterdir())


@pytest.mark.subprocess
def test_cold_load_rows_interleave_fresh_processes_and_match_stock(tmp_path: Path) -> None:
    # bench_cold --smoke: a tiny SAM loaded by every side, each round in fresh processes.
    out = tmp_path / "cold.json"
    cmd = [sys.executable, "-m", "benchmarks.bench_cold", "--smoke", "--repeat", "2"]
    proc = subprocess.run(
        [*cmd, "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    rows = {row["side"]: row for row in result["load"]}
    assert set(rows) == {"torch.load", "ours", "ours before", "stock"}
    assert all(len(row["runs"]) == 2 and row["seconds"] > 0 for row in rows.values())
    # the meta-device loader gives stock's model, tensor for tensor (buffers included)
    assert rows["ours"]["digest"] == rows["ours before"]["digest"] == rows["stock"]["digest"]
    assert "median of 2 fresh process(es)" in proc.stdout


def test_profile_table_names_the_operators_that_ran(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch = pytest.importorskip("torch")
    monkeypatch.syspath_prepend(str(REPO))
    from benchmarks.bench_throughput import profile_call

    a = torch.ones(64, 64)
    out = tmp_path / "profile.txt"
    profile_call(lambda: (a @ a).sum(), "cpu", out)
    text = out.read_text()
    assert text.startswith("# sorted by self_cpu_time_total")
    assert "aten::mm" in text and "aten::sum" in text
    assert "self_device_time_total" not in text  # the device table only where CUDA ran


@pytest.mark.subprocess
@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--smoke", "--cold-only"], "--cold-only runs the full mode's cold rows"),
        (["--cold-only", "--device", "cuda"], "--device cuda needs a CUDA GPU"),
    ],
)
def test_cold_only_and_cuda_are_refused_where_they_cannot_run(args: list[str], says: str) -> None:
    torch = pytest.importorskip("torch")
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cmd = [sys.executable, "-m", "benchmarks.bench_cold", *args]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and says in proc.stderr
    assert proc.stdout == ""  # refused before any model is built or table printed
