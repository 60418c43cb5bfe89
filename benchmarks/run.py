"""One command for every benchmark: runs each script in its own process, prints one report.

    python -m benchmarks [--quick | --smoke] [--vit-h] [--device cpu|cuda]
                         [--json PATH] [--out-md PATH]

Components (each ``python -m benchmarks.bench_<name> --json FILE``, sequentially, so their
peak memory never mixes): mask stage, MAP, network, end to end, CLI start-up, cold start
(SAM loading; a cold `sam-deblur photo.jpg` in full mode), steady-state mask generation
(CUDA, or full mode), video, training step, batch overlap (sequential vs overlapped), time
to result with the models loaded once (a photo, a folder and a video against the stock loop),
Ray batch (skipped when Ray is not installed). A component that fails or times out is shown as such
with its last error line; the rest go on. The report is Markdown
(machine; one section per component; targets) with absolute numbers and ours/stock ratios
(below 1 is better for ours); the JSON holds everything each component wrote. Modes: full,
``--quick``, ``--smoke`` (tiny models, seconds: only the end-to-end, batch overlap and time
to result components run). The first five components take ~20 min (full) and ~3 min
(``--quick``) on 2 cores; the later ones add minutes more.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks.common import markdown_table

REPO = Path(__file__).resolve().parents[1]
GB = 1 << 30
MB = 1 << 20


@dataclass(frozen=True)
class Options:
    mode: str  # "full" | "quick" | "smoke"
    vit_h: bool
    device: str


@dataclass(frozen=True)
class Component:
    """One benchmark script; ``args`` gives its options for a mode, or None to skip it."""

    key: str
    title: str
    module: str
    args: Callable[[Options], list[str] | None]
    timeout_s: dict[str, float]
    takes_device: bool = False
    takes_vit_h: bool = False
    core: bool = True  # counted in the "whole run" target (later additions are not)
    needs: str | None = None  # an optional package the script imports (skipped without it)


def _quick_flag(opts: Options) -> list[str] | None:
    # These scripts have no tiny mode: a smoke run skips them.
    return None if opts.mode == "smoke" else (["--quick"] if opts.mode == "quick" else [])


def _device_args(opts: Options) -> list[str] | None:
    flags = _quick_flag(opts)
    return None if flags is None else [*flags, "--device", opts.device]


def _e2e_args(opts: Options) -> list[str]:
    flags = {"smoke": ["--smoke"], "quick": ["--quick"], "full": []}[opts.mode]
    return [*flags, "--device", opts.device, *(["--vit-h"] if opts.vit_h else [])]


def _overlap_args(opts: Options) -> list[str]:
    flags = {"smoke": ["--smoke"], "quick": ["--quick"], "full": []}[opts.mode]
    return [*flags, "--device", opts.device]


def _steady_args(opts: Options) -> list[str] | None:
    # Stock SAM at 32 x 32 points takes minutes on 2 cores: the CPU runs it in full mode only.
    if opts.mode == "smoke" or (opts.mode == "quick" and opts.device == "cpu"):
        return None
    repeat = "1" if opts.device == "cpu" else "3"
    return ["--device", opts.device, "--repeat", repeat, *(["--vit-h"] if opts.vit_h else [])]


def _throughput_args(opts: Options) -> list[str] | None:
    # On 2 cores even its --quick sizes take ~15 min (stock SAM's decoder): the CPU runs them
    # in full mode only, one timed run per photo; the issue's sizes are for CUDA.
    if opts.mode == "smoke":
        return ["--smoke", "--repeat", "1"]
    if opts.device == "cpu":
        return None if opts.mode == "quick" else ["--quick", "--repeat", "1", "--device", "cpu"]
    flags = ["--quick"] if opts.mode == "quick" else []
    return [*flags, "--device", opts.device, *(["--vit-h"] if opts.vit_h else [])]


def _startup_args(opts: Options) -> list[str] | None:
    # A smoke run skips it: an eager torch import is seconds the test budget lacks.
    return None if opts.mode == "smoke" else ["--repeat", "1" if opts.mode == "quick" else "3"]


# Timeouts only catch a hung script: a busy machine can take several times the quiet one.
COMPONENTS = (
    Component(
        "masks", "Mask stage", "benchmarks.bench_masks", _quick_flag, {"quick": 600, "full": 1800}
    ),
    Component(
        "map",
        "MAP",
        "benchmarks.bench_map",
        _device_args,
        {"quick": 300, "full": 900},
        takes_device=True,
    ),
    Component(
        "network",
        "Network",
        "benchmarks.bench_network",
        _device_args,
        {"quick": 600, "full": 1200},
        takes_device=True,
    ),
    Component(
        "e2e",
        "End to end",
        "benchmarks.bench_e2e",
        _e2e_args,
        {"smoke": 300, "quick": 900, "full": 3600},
        takes_device=True,
        takes_vit_h=True,
    ),
    Component(
        "startup",
        "Start-up",
        "benchmarks.bench_startup",
        _startup_args,
        {"quick": 120, "full": 300},
    ),
    Component(
        "cold",
        "Cold start",
        "benchmarks.bench_cold",
        _quick_flag,
        {"quick": 300, "full": 3600},
        core=False,
    ),
    Component(
        "steady",
        "Steady-state mask generation",
        "benchmarks.bench_steady",
        _steady_args,
        {"quick": 600, "full": 1800},
        takes_device=True,
        takes_vit_h=True,
        core=False,
    ),
    Component(
        "video",
        "Video",
        "benchmarks.bench_video",
        _device_args,
        {"quick": 600, "full": 1800},
        takes_device=True,
        core=False,
    ),
    Component(
        "train",
        "Training step",
        "benchmarks.bench_train",
        _device_args,
        {"quick": 300, "full": 1200},
        takes_device=True,
        core=False,
    ),
    Component(
        "overlap",
        "Batch overlap",
        "benchmarks.bench_overlap",
        _overlap_args,
        {"smoke": 300, "quick": 900, "full": 2400},
        takes_device=True,
        core=False,
    ),
    Component(
        "throughput",
        "Time to result, models loaded once",
        "benchmarks.bench_throughput",
        _throughput_args,
        {"smoke": 300, "quick": 1200, "full": 3600},
        takes_device=True,
        takes_vit_h=True,
        core=False,
    ),
    Component(
        "ray",
        "Ray batch",
        "benchmarks.bench_ray",
        _quick_flag,
        {"quick": 300, "full": 900},
        core=False,
        needs="ray",
    ),
)


# --------------------------------------------------------------------------- running


def run_component(comp: Component, opts: Options, logs: Path) -> dict[str, Any]:
    """Run one component to completion; ``{"status", "seconds", "result" | "error", ...}``."""
    args = comp.args(opts)
    if args is None:
        return {"status": "skipped", "error": f"not run in --{opts.mode} mode"}
    if comp.needs and importlib.util.find_spec(comp.needs) is None:
        return {"status": "skipped", "error": f"needs {comp.needs}, which is not installed"}
    if importlib.util.find_spec(comp.module) is None:
        path = comp.module.replace(".", "/") + ".py"
        return {"status": "missing", "error": f"{path} does not exist (yet)"}
    out_json = logs / f"{comp.key}.json"
    out_json.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", comp.module, *args, "--json", str(out_json)]
    timeout = comp.timeout_s.get(opts.mode, 600)
    start = time.perf_counter()
    with (logs / f"{comp.key}.log").open("w") as log, (logs / f"{comp.key}.err").open("w") as err:
        # Its own process group, so that a time-out ends the script and every child it started.
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=err, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _end_group(proc)
            code = None
        except KeyboardInterrupt:  # Ctrl-C reaches only us: the script is in its own group
            _end_group(proc)
            raise
    entry: dict[str, Any] = {"seconds": time.perf_counter() - start, "command": cmd}
    if code is None:
        entry.update(status="timeout", error=f"timed out after {timeout:.0f} s")
    elif code != 0 or not out_json.exists():
        entry.update(status="failed", error=_last_line(logs / f"{comp.key}.err", code))
    else:
        entry["status"] = "ok"
    if out_json.exists():  # a script that writes as it goes leaves its finished part
        entry["result"] = json.loads(out_json.read_text())
    return entry


def _end_group(proc: subprocess.Popen[bytes], grace_s: float = 10) -> None:
    """End a component started with ``start_new_session`` and every process in its group:
    SIGTERM (time to clean up), then SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace_s)
    with contextlib.suppress(ProcessLookupError):  # whatever of the group is still there
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _last_line(path: Path, code: int) -> str:
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else f"exit status {code}, nothing on stderr"


def run_all(opts: Options, logs: Path, progress: Callable[[str], None]) -> dict[str, Any]:
    """Machine description plus every component's entry, in report order."""
    logs.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    components: dict[str, Any] = {}
    for comp in COMPONENTS:
        progress(f"running {comp.title.lower()} ({comp.module}) ...")
        components[comp.key] = run_component(comp, opts, logs)
        progress(f"  {components[comp.key]['status']}")
    machine["loadavg_end"] = _loadavg()
    machine["torch_threads"] = _dig(components, "e2e", "result", "config", "torch_threads")
    notes = [_capability_note(comp, opts) for comp in COMPONENTS]
    return {
        "mode": opts.mode,
        "device": opts.device,
        "vit_h": opts.vit_h,
        "machine": machine,
        "components": components,
        "notes": [n for n in notes if n],
    }


def _capability_note(comp: Component, opts: Options) -> str:
    """Which asked-for option a component lacks, and so what its numbers are really for."""
    lacks = []
    if opts.device == "cuda" and not comp.takes_device:
        lacks.append(("--device", "the CPU"))
    if opts.vit_h and not comp.takes_vit_h:
        lacks.append(("--vit-h", "SAM vit_b"))
    missing = comp.needs is not None and importlib.util.find_spec(comp.needs) is None
    if not lacks or comp.args(opts) is None or missing:
        return ""
    flags, meaning = " or ".join(f for f, _ in lacks), " and ".join(m for _, m in lacks)
    return f"{comp.module} has no {flags}: its numbers are for {meaning}."


# --------------------------------------------------------------------------- machine


def machine_info() -> dict[str, Any]:
    """CPU model, cores, RAM, Python and torch versions, load: what the numbers depend on."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        torch_version = version("torch")
    except PackageNotFoundError:
        torch_version = "not installed"
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "ram_bytes": _meminfo("MemTotal"),
        "mem_available_start_bytes": _meminfo("MemAvailable"),
        "python": platform.python_version(),
        "torch": torch_version,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "thp_mem_alloc": os.environ.get("THP_MEM_ALLOC_ENABLE"),
        "loadavg_start": _loadavg(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _git_commit(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _meminfo(key: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _loadavg() -> list[float] | None:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _dig(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


# --------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.splitlines()[0]
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="smaller cases, ~3 minutes")
    mode.add_argument("--smoke", action="store_true", help="tiny models, seconds (for tests)")
    parser.add_argument("--vit-h", action="store_true", help="SAM vit_h instead of vit_b")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--json", type=Path, help="write the combined results here")
    parser.add_argument("--out-md", type=Path, help="write the Markdown report here")
    parser.add_argument(
        "--logs",
        type=Path,
        default=REPO / "bench-results" / "logs",
        help="component logs and JSON files (default: bench-results/logs)",
    )
    return parser.parse_args(argv)


def check_device(device: str) -> str | None:
    """Why ``device`` cannot be used here (None if it can)."""
    if device != "cuda":
        return None
    import torch

    if not torch.cuda.is_available():
        return (
            "--device cuda needs a CUDA GPU, and torch sees none on this machine; use --device cpu."
        )
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks, print the Markdown report, write the JSON; 0 unless set-up fails."""
    args = parse_args(argv)
    problem = check_device(args.device)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    opts = Options(
        "smoke" if args.smoke else "quick" if args.quick else "full", args.vit_h, args.device
    )
    try:
        data = run_all(opts, args.logs, lambda msg: print(msg, file=sys.stderr, flush=True))
    except KeyboardInterrupt:
        print("interrupted: the running component was stopped, no report", file=sys.stderr)
        return 130
    report = render(data)
    print(report)
    if args.out_md:
        args.out_md.write_text(report + "\n")
    if args.json:
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    return 0


# --------------------------------------------------------------------------- report


def render(data: dict[str, Any]) -> str:
    """The whole Markdown report: machine, one section per component, targets, notes."""
    comps = data["components"]
    parts = [
        f"# sam-deblur benchmarks ({data['mode']} mode, device {data['device']})",
        "Ratios are ours / stock: below 1 is better for ours.",
        "## Machine",
        render_machine(data["machine"]),
    ]
    for comp in COMPONENTS:
        parts += [f"## {comp.title}", render_component(comp.key, comps.get(comp.key, {}))]
    parts += ["## Targets", render_targets(comps, data.get("mode", "full"))]
    if data.get("notes"):
        parts += ["## Notes", "\n".join(f"- {note}" for note in data["notes"])]
    return "\n\n".join(parts)


def render_machine(m: dict[str, Any]) -> str:
    """Machine table, with a warning when the load average exceeded the usable cores."""
    threads = m.get("torch_threads") or m.get("omp_num_threads") or "torch default"
    start, end = m.get("loadavg_start"), m.get("loadavg_end")
    rows = [
        ["CPU", m["cpu"]],
        ["cores", f"{m['cores']} ({m['cores_usable']} usable)"],
        ["RAM", f"{_gb(m.get('ram_bytes'))} ({_gb(m.get('mem_available_start_bytes'))} free)"],
        ["Python / torch", f"{m['python']} / {m['torch']}"],
        ["torch threads", threads],
        ["huge-page advice (THP_MEM_ALLOC_ENABLE, both sides)", m.get("thp_mem_alloc") or "-"],
        ["load average (1 min)", f"{_load(start)} at start, {_load(end)} at end"],
        ["date / commit", f"{m['date']} / {m.get('commit')}"],
    ]
    text = markdown_table(["", ""], rows)
    loads = [v[0] for v in (start, end) if v]
    if loads and max(loads) > (m.get("cores_usable") or 1):
        text += (
            "\n\nThe machine was busy (load above its core count): wall times are noisy; "
            "CPU seconds are steadier."
        )
    return text


def render_component(key: str, entry: dict[str, Any]) -> str:
    """A component's section: its tables, or its status and last error line."""
    status = entry.get("status", "missing")
    if "result" not in entry:
        return f"**{status}**: {entry.get('error', '')}"
    head = (
        "" if status == "ok" else f"**{status}**: {entry.get('error', '')}; what it finished:\n\n"
    )
    renderer = _RENDERERS.get(key, render_generic)
    try:
        body = renderer(entry["result"])
    except (KeyError, TypeError, ValueError, IndexError, ZeroDivisionError) as exc:
        # A script changed its JSON layout: show the values anyway rather than lose the run.
        body = f"(layout not recognised: {exc!r})\n\n" + render_generic(entry["result"])
    return f"{head}{body}\n\n({entry['seconds']:.0f} s for this section)"


def render_masks(rows: list[dict[str, Any]]) -> str:
    """bench_masks: totals (wall and CPU), peaks, mask counts per scenario; then by stage."""
    head = [
        "scenario",
        "points",
        "stock s (CPU)",
        "ours s (CPU)",
        "ours/stock (CPU)",
        "stock peak",
        "ours peak",
        "ours/stock",
        "masks stock / ours",
        "whole process stock / ours s",
    ]
    summary, stages = [], []
    for r in rows:
        s, o = r["stock"], r["ours"]
        sw, ow = s["seconds"]["total"], o["seconds"]["total"]
        sc, oc = _cpu(s, "total"), _cpu(o, "total")
        same = "same segmask" if s["segmask_sum"] == o["segmask_sum"] else "SEGMASKS DIFFER"
        summary.append(
            [
                r["name"],
                f"{r['points']}^2",
                f"{sw:.1f} ({_num(sc)})",
                f"{ow:.1f} ({_num(oc)})",
                f"{_ratio(ow, sw)} ({_ratio(oc, sc)})",
                f"{s['peak_rss_gb']:.2f} GB",
                f"{o['peak_rss_gb']:.2f} GB",
                _ratio(o["peak_rss_gb"], s["peak_rss_gb"]),
                f"{s.get('masks', '?')} / {o.get('masks', '?')}, {same}",
                _process(s, o),
            ]
        )
        for stage in ("encoder", "decoder", "post"):
            a, b = s["seconds"].get(stage, 0.0), o["seconds"].get(stage, 0.0)
            stages.append(
                [
                    r["name"],
                    stage,
                    f"{a:.2f}",
                    f"{b:.2f}",
                    _ratio(b, a),
                    _num(_cpu(s, stage)),
                    _num(_cpu(o, stage)),
                ]
            )
    detail_head = [
        "scenario",
        "stage",
        "stock s",
        "ours s",
        "ours/stock",
        "stock CPU s",
        "ours CPU s",
    ]
    return markdown_table(head, summary) + "\n\nBy stage:\n\n" + markdown_table(detail_head, stages)


def render_map(result: dict[str, Any]) -> str:
    """bench_map: dense broadcast versus the label-map segment mean, time and memory."""
    t = result["time"]
    dense, ours = t["dense"]["best_s"], t["ours"]["best_s"]
    (w, h), groups = t["size"], t["groups"]
    time_row = [
        f"{w}x{h}, {groups} groups",
        f"{dense:.3f} s",
        f"{ours:.4f} s",
        _ratio(ours, dense, digits=4),
        f"{dense / ours:.0f}x",
        f"{t['max_abs_diff']:.1e}",
    ]
    text = f"Device: {result.get('device', 'cpu')}.\n\n" + markdown_table(
        ["time", "dense (stock)", "ours", "ours/stock", "speed-up", "max abs diff"], [time_row]
    )
    rows = []
    for m in result["memory"]:
        d, o = m["dense"], m["ours"]
        fits = d.get("status") == "ok"
        rows.append(
            [
                f"{m['size'][0]}x{m['size'][1]}, {m['groups']} groups",
                f"{d['peak_bytes'] / MB:.0f} MB, {d['best_s']:.2f} s"
                if fits
                else f"does not fit (needs ~{_gb(d.get('needs_bytes'))})",
                f"{o['peak_bytes'] / MB:.0f} MB, {o['best_s']:.2f} s",
                _ratio(o["peak_bytes"], d["peak_bytes"], digits=4) if fits else "-",
            ]
        )
    if not rows:  # --quick measures time only
        return text
    return (
        text
        + "\n\n"
        + markdown_table(["peak extra memory", "dense (stock)", "ours", "ours/stock"], rows)
    )


def render_network(result: dict[str, Any]) -> str:
    """bench_network: upstream-style forward versus ours, TLC off and on."""
    cfg = result["config"]
    rows = []
    for name, r in result["runs"].items():
        up, ours = r["upstream_time"]["best_s"], r["ours_time"]["best_s"]
        mu, mo = r["upstream_peak_bytes"], r["ours_peak_bytes"]
        rows.append(
            [
                name,
                f"{up:.2f} s",
                f"{ours:.2f} s",
                _ratio(ours, up),
                f"{mu / MB:.0f} MB",
                f"{mo / MB:.0f} MB",
                _ratio(mo, mu),
                f"{r['max_abs_diff']:.1e}",
            ]
        )
    head = [
        "pooling",
        "upstream",
        "ours",
        "ours/upstream",
        "upstream peak",
        "ours peak",
        "ours/upstream",
        "max abs diff",
    ]
    title = (
        f"NAFNet width {cfg['width']}, enc {list(cfg['enc_blk_nums'])}, "
        f"{cfg['width_px']}x{cfg['height']}, {cfg.get('device', 'cpu')}, best wall time."
    )
    return title + "\n\n" + markdown_table(head, rows)


def render_e2e(result: dict[str, Any]) -> str:
    """bench_e2e: wall (CPU) time and peak RSS of both pipelines per case; stage times."""
    cfg = result["config"]
    nets = ", ".join(
        f"{name}: width {n['width']} enc {n['enc_blk_nums']}" for name, n in cfg["nets"].items()
    )
    intro = (
        f"SAM {cfg['sam_arch']} and SegNAFNet ({nets}), random weights, TLC on, "
        f"{cfg['device']}. Wall and CPU time of the whole process (start-up and model loading "
        "included). Stock = SamAutomaticMaskGenerator + upstream encoding + dense broadcast MAP "
        f"+ plain NAFNet, no tiling, under a {_gb(cfg['stock_cap_bytes'])} address-space cap "
        "(less when less memory is free)."
    )
    head = [
        "case",
        "model",
        "stock s (CPU)",
        "ours s (CPU)",
        "ours/stock (CPU)",
        "stock peak",
        "ours peak",
        "ours/stock",
        "masks / groups",
        "tile",
        "output diff (uint8)",
    ]
    rows, stages = [], []
    for row in result["cases"]:
        case, ours, stock = row["case"], row["ours"], row["stock"]
        diff = row.get("output_diff")
        ratio = "-"
        if "ratio_time" in row:
            ratio = f"{row['ratio_time']:.2f} ({row['ratio_cpu']:.2f})"
        rows.append(
            [
                case["name"],
                case["model"],
                _side_time(stock),
                _side_time(ours),
                ratio,
                _side_peak(stock),
                _side_peak(ours),
                f"{row['ratio_rss']:.2f}" if "ratio_rss" in row else "-",
                f"{ours.get('masks')} / {ours.get('groups')}",
                ours.get("tile", "-"),
                f"max {diff['max_abs_diff']}, mean {diff['mean_abs_diff']:.3f}" if diff else "-",
            ]
        )
        stages.append([case["name"], _stages(stock), _stages(ours)])
    detail = markdown_table(["case", "stock stages (s)", "ours stages (s)"], stages)
    return intro + "\n\n" + markdown_table(head, rows) + "\n\nStages:\n\n" + detail


def _side_time(side: dict[str, Any]) -> str:
    status = side.get("status")
    if status == "ok":
        return f"{side['wall_s']:.1f} ({side.get('cpu_s', 0):.0f})"
    if status == "oom":
        return (
            f"out of memory in {side.get('stage')} after {side.get('wall_s', 0):.0f} s "
            f"(cap {_gb(side.get('memory_cap_bytes'))})"
        )
    if status == "does_not_fit":
        return (
            f"does not fit: its dense MAP alone needs ~{_gb(side['needs_bytes'])} for "
            f"{side['groups']} groups, over the {_gb(side['memory_cap_bytes'])} cap "
            "(estimated, not run)"
        )
    return f"{status}: {side.get('error', '')}".rstrip(": ")


def _side_peak(side: dict[str, Any]) -> str:
    if side.get("status") in ("ok", "oom") and side.get("peak_rss_bytes"):
        return _gb(side["peak_rss_bytes"])
    return "-"


def _stages(side: dict[str, Any]) -> str:
    secs = side.get("seconds") or {}
    return ", ".join(f"{k} {v:.1f}" for k, v in secs.items() if isinstance(v, (int, float))) or "-"


def render_startup(result: dict[str, Any]) -> str:
    """bench_startup: `sam-deblur --help` versus a CLI importing torch eagerly."""
    r = result["startup"]
    row = [
        "`sam-deblur --help`",
        f"{r['eager_s']:.2f} s",
        f"{r['ours_s']:.2f} s",
        _ratio(r["ours_s"], r["eager_s"]),
    ]
    return markdown_table(["command", "stock (eager imports)", "ours", "ours/stock"], [row])


def render_cold(result: dict[str, Any]) -> str:
    """bench_cold: SAM load times against torch.load; the cold CLI, before/after/stock."""
    from benchmarks.bench_cold import table

    return table(result)


def render_steady(result: dict[str, Any]) -> str:
    """bench_steady: SAM loaded once, warm; ours vs stock mask generation to the segmask."""
    from benchmarks.bench_steady import table

    return table(result)


def render_video(result: dict[str, Any]) -> str:
    """bench_video: frames/s and flicker per model, mask strategy and batch; the naive loop."""
    c = result["config"]
    models = c.get("models", "tiny random-weight")
    head = f"{c['width']} x {c['height']}, {c['frames']} frames, {models} models"
    if "input_flicker" in c:
        head += f"; flicker in 8-bit levels (the input's: {c['input_flicker']:.4f})"
    head += "\n\n"
    rows = [
        [
            r["model"],
            r["masks"],
            str(r["batch"]),
            f"{r['frames_per_s']:.2f}",
            str(r["sam_runs"]),
            f"{r['flicker']:.4f}",
        ]
        for r in result["rows"]
    ]
    columns = ["model", "masks", "batch", "frames/s", "SAM runs", "flicker"]
    return head + markdown_table(columns, rows)


def render_train(result: dict[str, Any]) -> str:
    """bench_train: one training step, upstream-style versus ours."""
    a, r = result["args"], result["results"]
    head = (
        f"width {a['width']}, batch {a['batch']}, {a['size']} px, ours {a['precision']}; "
        f"step ours/upstream-style {_ratio(r['ours']['step_s'], r['upstream-style']['step_s'])}"
        "\n\n"
    )
    rows = [
        [
            name,
            f"{side['step_s']:.3f}",
            f"{side['images_per_s']:.2f}",
            f"{100 * side['map_share']:.1f}%",
            f"{side['peak_gb']:.2f} GB" if side.get("peak_gb") is not None else "-",
        ]
        for name, side in r.items()
    ]
    return head + markdown_table(["side", "step s", "images/s", "MAP share", "peak"], rows)


def render_ray(result: dict[str, Any]) -> str:
    """bench_ray: the same folder through the local batch and through Ray."""
    from benchmarks.bench_ray import table

    head = (
        f"{result['images']} images of {result['size']} px, {result['cpus']} CPUs; "
        f"outputs identical to the local run at 1 thread: {result['identical_outputs']}\n\n"
    )
    return head + table(result)


def render_overlap(result: dict[str, Any]) -> str:
    """bench_overlap: one folder through run_batch, sequential vs overlapped, one run."""
    from benchmarks.bench_overlap import table

    c = result["config"]
    head = (
        f"{c['photos']} photos of {c['shape'][0]} x {c['shape'][1]}, SAM {c['sam_arch']} "
        f"(controlled decoder) and {c['model']}, {c['device']}, {c['torch_threads']} torch "
        f"threads; load {c['loadavg_start']:.1f} at the start, {c['loadavg_end']:.1f} at the end"
        "\n\n"
    )
    return head + table(result)


def render_throughput(result: dict[str, Any]) -> str:
    """bench_throughput: a photo, a folder and a video with the models loaded once."""
    from benchmarks.bench_throughput import table

    return table(result)


def render_generic(result: Any) -> str:
    """Any JSON as a path / value table (for scripts without a dedicated renderer)."""
    rows = [[path, value] for path, value in _flatten(result)]
    return markdown_table(["key", "value"], rows) if rows else "(no values)"


def _flatten(data: Any, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(data, dict):
        return [kv for k, v in data.items() for kv in _flatten(v, f"{prefix}.{k}".lstrip("."))]
    if isinstance(data, list):
        return [kv for i, v in enumerate(data) for kv in _flatten(v, f"{prefix}[{i}]")]
    return [(prefix, f"{data:.4g}" if isinstance(data, float) else str(data))]


_RENDERERS: dict[str, Callable[[Any], str]] = {
    "masks": render_masks,
    "map": render_map,
    "network": render_network,
    "e2e": render_e2e,
    "startup": render_startup,
    "cold": render_cold,
    "steady": render_steady,
    "video": render_video,
    "train": render_train,
    "overlap": render_overlap,
    "throughput": render_throughput,
    "ray": render_ray,
}


def _cpu(side: dict[str, Any], stage: str) -> float | None:
    cpu = side.get("cpu_seconds")
    return cpu.get(stage) if isinstance(cpu, dict) else None


def _process(stock: dict[str, Any], ours: dict[str, Any]) -> str:
    """Whole-process seconds of both sides and their ratio ('-' in older results)."""
    s, o = stock.get("process_s"), ours.get("process_s")
    return f"{s:.1f} / {o:.1f} ({_ratio(o, s)})" if s and o else "-"


def _ratio(ours: float | None, stock: float | None, digits: int = 2) -> str:
    return f"{ours / stock:.{digits}f}" if ours is not None and stock else "-"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _gb(value: float | None) -> str:
    return "?" if value is None else f"{value / GB:.1f} GB"


def _load(load: list[float] | None) -> str:
    return "?" if not load else f"{load[0]:.1f}"


# --------------------------------------------------------------------------- targets


def render_targets(comps: dict[str, Any], mode: str = "full") -> str:
    """The issue's targets for this machine, each with the measured value (n/a: not run)."""
    rows = [
        *_mask_targets(_result(comps, "masks")),
        _map_target(_result(comps, "map")),
        *_e2e_targets(_result(comps, "e2e")),
        _network_target(_result(comps, "network")),
        *_cold_targets(_result(comps, "cold")),
        *_throughput_targets(_result(comps, "throughput")),
    ]
    core = [c for c in COMPONENTS if c.core]
    total = sum(comps.get(c.key, {}).get("seconds", 0.0) for c in core)
    limit = {"full": 20.0, "quick": 3.0}.get(mode)
    met = _met(total / 60 < limit) if limit else "-"
    label = f"{', '.join(c.title.lower() for c in core)}: < 20 min (full), < 3 min (--quick)"
    rows.append([label, f"{total / 60:.1f} min", met])
    return markdown_table(["target", "measured", "met"], rows)


def _mask_targets(rows: Any) -> list[list[str]]:
    by_kind = {(r["scenario"], tuple(r["shape"])): r for r in rows or []}
    out = []
    for key, label, need in (
        (("vitb", (720, 1280)), "mask stage >= 2x faster than stock, 720p, random weights", 2.0),
        (("controlled", (3000, 4000)), "mask stage >= 5x faster, 12 MP, realistic survivors", 5.0),
    ):
        r = by_kind.get(key)
        if r is None:
            out.append([label, "n/a", "-"])
            continue
        # Whole child processes, start-up included, where recorded (older results: in-process).
        stock_s, ours_s = (r[side].get("process_s") for side in ("stock", "ours"))
        where = "whole process"
        if not stock_s or not ours_s:
            stock_s, ours_s = r["stock"]["seconds"]["total"], r["ours"]["seconds"]["total"]
            where = "generation"
        speed = stock_s / ours_s
        # the targets are for the stock generator's default 32 x 32 grid (--quick uses less)
        met = _met(speed >= need) if r["points"] == 32 else "- (not the 32^2 grid)"
        out.append([label, f"{speed:.2f}x ({r['points']}^2 points, {where})", met])
        if key[0] == "controlled":
            peak = r["ours"]["peak_rss_gb"]
            out.append(["mask stage peak <= 4 GB there", f"{peak:.2f} GB", _met(peak <= 4.0)])
    return out


def _map_target(result: Any) -> list[str]:
    label = "MAP >= 50x faster than dense, 720p / 150 groups"
    if not result:
        return [label, "n/a", "-"]
    t = result["time"]
    speed = t["dense"]["best_s"] / t["ours"]["best_s"]
    return [label, f"{speed:.0f}x ({t['groups']} groups)", _met(speed >= 50)]


def _e2e_targets(result: Any) -> list[list[str]]:
    cases = [c for c in (result or {}).get("cases", []) if c["case"]["shape"] == [3000, 4000]]
    default = next((c for c in cases if "--tile" not in c["case"]["ours_args"]), None)
    tiled = next((c for c in cases if "--tile" in c["case"]["ours_args"]), None)
    rows = []
    label = "end to end 12 MP completes with defaults; stock does not fit in 24 GB"
    if default is None:
        rows.append([label, "n/a", "-"])
    else:
        ours, stock = default["ours"]["status"], default["stock"]["status"]
        met = ours == "ok" and stock in ("oom", "does_not_fit")
        rows.append([label, f"ours {ours}, stock {stock}", _met(met)])
    label = "end to end 12 MP with --tile 1024: peak RSS <= 6 GB"
    if tiled is None or tiled["ours"]["status"] != "ok":
        rows.append([label, "n/a" if tiled is None else tiled["ours"]["status"], "-"])
    else:
        peak = tiled["ours"]["peak_rss_bytes"]
        rows.append([label, _gb(peak), _met(peak <= 6 * GB)])
    return rows


def _network_target(result: Any) -> list[str]:
    label = "network: ours no slower than 1.05x upstream (TLC on and off)"
    if not result:
        return [label, "n/a", "-"]
    runs = result["runs"].values()
    worst = max(r["ours_time"]["best_s"] / r["upstream_time"]["best_s"] for r in runs)
    return [label, f"worst {worst:.2f}", _met(worst <= 1.05)]


def _cold_targets(result: Any) -> list[list[str]]:
    """SAM vit_h loads in <= 1.5x torch.load of its file, equal to stock; a cold photo with
    the default recipe >= 10 s faster than the loader before, same output."""
    label = "SAM vit_h load <= 1.5x torch.load of its file, equal to stock's"
    load = {r["side"]: r for r in (result or {}).get("load", [])}
    arch = (result or {}).get("config", {}).get("sam_arch")
    if not {"torch.load", "ours", "stock"} <= {k for k, r in load.items() if "seconds" in r}:
        rows = [[label, "n/a", "-"]]
    else:
        ratio = load["ours"]["seconds"] / load["torch.load"]["seconds"]
        same = load["ours"]["digest"] == load["stock"]["digest"]
        shown = f"{ratio:.2f}x ({arch}), {'equal' if same else 'NOT EQUAL'}"
        rows = [[label, shown, _met(ratio <= 1.5 and same) if arch == "vit_h" else "-"]]
    label = "cold `sam-deblur photo.jpg` (vit_h) >= 10 s faster than before, same output"
    cold = {r["side"]: r for r in (result or {}).get("cold", [])}
    now, before = cold.get("ours", {}), cold.get("ours before", {})
    if "output" not in now or "output" not in before:
        return [*rows, [label, "n/a", "-"]]
    gain = before["wall_s"] - now["wall_s"]
    diff = (before.get("output_diff") or {}).get("max_abs_diff")
    shown = f"{gain:.1f} s faster, output max diff {diff}"
    return [*rows, [label, shown, _met(gain >= 10 and diff == 0)]]


def _throughput_targets(result: Any) -> list[list[str]]:
    """Issue #20's CUDA targets for the rows of bench_throughput (full sizes, on CUDA)."""
    rows = {r["row"]: r for r in (result or {}).get("rows", []) if "error" not in r}  # n/a
    on_cuda = (result or {}).get("config", {}).get("device", "").startswith("cuda")
    out = []
    photo = rows.get("photo 1920x1080")
    label = "CUDA: photo 1080p end to end <= 0.6 s (models loaded)"
    if photo is None:
        out.append([label, "n/a", "-"])
    else:
        best = photo["ours"]["best_s"]
        out.append([label, f"{best:.3f} s", _met(best <= 0.6) if on_cuda else "- (not CUDA)"])
    for key, label, need in (
        ("batch", "CUDA: batch photos/s >= 5x the stock loop", 5.0),
        ("video, SAM every 1", "CUDA: video frames/s >= 3x the stock loop, SAM every frame", 3.0),
        ("video, SAM every 8", "CUDA: video frames/s >= 3x the stock loop, SAM every 8th", 3.0),
    ):
        r = rows.get(key)
        if r is None:
            out.append([label, "n/a", "-"])
            continue
        speed = r["ours"]["rate"] / r["stock"]["rate"]
        out.append([label, f"{speed:.2f}x", _met(speed >= need) if on_cuda else "- (not CUDA)"])
    return out


def _result(comps: dict[str, Any], key: str) -> Any:
    return comps.get(key, {}).get("result")  # a partial result still holds finished cases


def _met(ok: bool) -> str:
    return "yes" if ok else "NO"
