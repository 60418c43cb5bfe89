"""Cold start: loading SAM, and one cold `sam-deblur photo.jpg`, ours before/after and stock.

Load rows: a random-weight SAM checkpoint (vit_h; vit_b with ``--quick``, the tiny test
architecture with ``--smoke``) loaded in a fresh process per side, each timing only the
call (imports excluded) and hashing every parameter and buffer (name, dtype, device,
bytes) afterwards, so that identical models show identical digests:

- ``torch.load``: the file alone (``weights_only=True``), the yardstick;
- ``ours``: ``weights.models.load`` (meta-device build, the file read, its tensors assigned);
- ``ours before``: the loader before that: a build with initial weights, ``torch.load``
  without mmap, ``load_state_dict`` copying into it;
- ``stock``: ``sam_model_registry[arch](checkpoint=file)``, segment-anything's README way.

Cold CLI rows (full mode only): process start to written output of
``sam-deblur photo.jpg -o out.png`` on one 720p photo, the default recipe's generator
settings, SAM vit_h-sized and the full-depth network (``segnafnet-gopro`` shapes), random
weights behind a benchmark manifest (``bench_e2e.prepare_models``): ours, ours with the old
loader patched in (same output expected, byte for byte), and the stock pipeline
(``stock_pipeline.py``). SAM's decoder output is ``bench_e2e``'s controlled logits, so both
sides get the same realistic masks. Every file was just written, so it is in the page
cache: "cold" is the process, not the disk.

    python -m benchmarks.bench_cold [--quick | --smoke | --load-only | --cold-only]
                                    [--device cpu|cuda] [--repeat N] [--json PATH]

``--device cuda`` runs the cold CLI rows on the GPU (the load rows read to host memory on
every device). On CUDA the controlled decoder's stand-in is host work on both sides.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.bench_e2e import (
    FULL_NET,
    MODEL,
    Case,
    Models,
    compare_outputs,
    measure,
    ours_command,
    prepare_models,
    run_stock,
    stock_amg,
    write_photo,
)

SIDES = ("torch.load", "ours", "ours before", "stock")
COLD_SHAPE = (720, 1280)


# --------------------------------------------------------------------------- load rows


def model_digest(module: Any) -> str:
    """sha256 over every parameter and buffer (non-persistent ones too): name, dtype,
    device, shape and bytes, in registration order."""
    digest = hashlib.sha256()
    tensors = [*module.named_parameters(), *module.named_buffers()]
    for name, tensor in tensors:
        digest.update(f"{name} {tensor.dtype} {tensor.device} {tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().contiguous().numpy().view("uint8").data)
    return digest.hexdigest()


def old_load(entry: Any, path: Path, *, config: Any = None) -> Any:
    """The loader before the meta-device build: initial weights, a full read, a copy."""
    import torch

    from sam_deblur_cli.checkpoints import _unwrap, filter_keys, load_strict
    from sam_deblur_cli.weights import models

    module = models.build(entry, config=config)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    load_strict(module, filter_keys(_unwrap(raw, Path(path))))
    return module


def child_load(side: str, manifest: Path, sam_file: Path, result: Path) -> None:
    """One side of the load rows, in this (fresh) process: seconds of the call, digest."""
    import torch
    from segment_anything import sam_model_registry

    from benchmarks.stock_pipeline import register_tiny_arch
    from sam_deblur_cli.weights import load_manifest, models

    register_tiny_arch()  # a smoke run's architecture; real ones are untouched
    entry = load_manifest(manifest).get("bench-sam")
    start, cpu_start = time.perf_counter(), time.process_time()
    if side == "torch.load":
        loaded: Any = torch.load(sam_file, map_location="cpu", weights_only=True)
    elif side == "ours":
        loaded = models.load(entry, sam_file)
    elif side == "ours before":
        loaded = old_load(entry, sam_file)
    else:
        loaded = sam_model_registry[entry.arch](checkpoint=str(sam_file))
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    digest = None if side == "torch.load" else model_digest(loaded)
    result.write_text(
        json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds, "digest": digest})
    )


def load_rows(
    work: Path, sam_arch: str, sam_file: Path, timeout: float, repeat: int = 1
) -> list[dict[str, Any]]:
    """Every side of the load rows, each run in a fresh child process, ``repeat`` rounds with
    the sides interleaved (a busy spell then hits every side); a row's ``seconds`` is the
    median of its runs, ``runs`` all of them."""
    from benchmarks.bench_e2e import manifest_text

    manifest = work / "load-weights.toml"
    manifest.write_text(manifest_text(sam_arch, {}, {}))
    rows: dict[str, dict[str, Any]] = {
        side: {"side": side, "runs": [], "cpu_runs": [], "peak_rss_bytes": 0} for side in SIDES
    }
    for _ in range(repeat):
        for side in SIDES:
            row = rows[side]
            slug = side.replace(" ", "-").replace(".", "-")
            result = work / f"load-{slug}.json"
            cmd = [sys.executable, "-m", "benchmarks.bench_cold", "--child-load", side]
            cmd += [str(manifest), str(sam_file), str(result)]
            m = measure(cmd, env=_env(), logs=work / f"load-{slug}", timeout=timeout)
            if m.returncode != 0:
                row["error"] = m.last_error()
                continue
            child = json.loads(result.read_text())
            row["runs"].append(child["seconds"])
            row["cpu_runs"].append(child["cpu_seconds"])
            row.update(digest=child["digest"], process_s=m.wall_s)
            row["peak_rss_bytes"] = max(row["peak_rss_bytes"], m.peak_rss_bytes)
    for row in rows.values():
        if row["runs"] and "error" not in row:
            row["seconds"] = statistics.median(row["runs"])
            row["cpu_seconds"] = statistics.median(row["cpu_runs"])
    return list(rows.values())


def _env() -> dict[str, str]:
    import os

    from benchmarks.bench_e2e import REPO

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


# --------------------------------------------------------------------------- cold CLI rows


def cold_rows(
    models: Models, work: Path, timeout: float, repeat: int = 1, device: str = "cpu"
) -> list[dict[str, Any]]:
    """`sam-deblur photo.jpg` cold with the new loader, with the old one (``repeat`` pairs,
    interleaved; wall and CPU seconds are medians, ``runs`` lists each pair's), and the stock
    pipeline once, all on ``device``; outputs compared with the new loader's."""
    import shutil

    photo = write_photo(work / "photo.jpg", COLD_SHAPE)
    case = Case("720p cold, default recipe", COLD_SHAPE, model=MODEL)
    rows = {side: {"side": side, "runs": []} for side in ("ours", "ours before")}
    for _ in range(repeat):
        for side, row in rows.items():
            shutil.rmtree(models.home / "masks", ignore_errors=True)  # masks made, not cached
            out = work / f"cold-{side.replace(' ', '-')}.png"
            cmd = ours_command(models, case, photo, out, device)
            if side == "ours before":
                cmd[1:4] = ["-m", "benchmarks.bench_cold", "--child-cli-old-loader"]
            m = measure(cmd, env=models.env(), logs=out.with_suffix(""), timeout=timeout)
            if m.returncode != 0:
                row["error"] = m.last_error()
                continue
            record = json.loads(m.stdout.read_text().strip().splitlines()[-1])
            row["runs"].append(
                {"wall_s": m.wall_s, "cpu_s": m.cpu_s, "seconds": record.get("seconds", {})}
            )
            row.update(output=str(out), groups=record.get("groups"))
            row["peak_rss_bytes"] = max(row.get("peak_rss_bytes", 0), m.peak_rss_bytes)
    for row in rows.values():
        if row["runs"]:
            row["wall_s"] = statistics.median(r["wall_s"] for r in row["runs"])
            row["cpu_s"] = statistics.median(r["cpu_s"] for r in row["runs"])
    ours, before = rows["ours"], rows["ours before"]
    stock = run_stock(models, case, photo, work, device, timeout)
    result = [ours, before, {"side": "stock", **stock}]
    for row in result[1:]:
        row["output_diff"] = compare_outputs(ours.get("output"), row.get("output"))
    return result


def child_cli_old_loader(argv: list[str]) -> int:
    """bench_e2e's CLI child with ``weights.models.load`` replaced by :func:`old_load`."""
    from benchmarks.bench_e2e import child_cli
    from sam_deblur_cli.weights import models

    models.load = old_load  # type: ignore[assignment]
    return child_cli(argv)


# --------------------------------------------------------------------------- the run


def run(
    mode: str,
    *,
    timeout: float = 1800,
    repeat: int = 1,
    cold: bool = True,
    load: bool = True,
    device: str = "cpu",
) -> dict[str, Any]:
    """Load rows for the mode's SAM, ``repeat`` rounds, unless ``load`` is False; cold CLI rows
    on ``device`` in full mode unless ``cold`` is False. The JSON-able result."""
    import torch

    from benchmarks.bench_e2e import save_sam
    from benchmarks.stock_pipeline import TINY_ARCH, register_tiny_arch

    sam_arch = {"smoke": TINY_ARCH, "quick": "vit_b", "full": "vit_h"}[mode]
    config = {"mode": mode, "sam_arch": sam_arch, "torch_threads": torch.get_num_threads()}
    config.update(repeat=repeat, device=device)
    result: dict[str, Any] = {"config": config}
    with tempfile.TemporaryDirectory(prefix="sam-deblur-cold-") as tmp:
        work = Path(tmp)
        if mode == "full" and cold:
            models = prepare_models(
                work, sam_arch=sam_arch, nets={MODEL: FULL_NET}, amg=stock_amg()
            )
            sam_file = models.sam_file
        else:
            if sam_arch == TINY_ARCH:
                register_tiny_arch()
            sam_file = save_sam(work / "sam.pth", sam_arch)
        config["sam_file_bytes"] = sam_file.stat().st_size
        result["load"] = load_rows(work, sam_arch, sam_file, timeout, repeat) if load else []
        if mode == "full" and cold:
            config["cold_shape"] = list(COLD_SHAPE)
            config["net"] = FULL_NET
            result["cold"] = cold_rows(models, work, timeout, repeat, device)
    return result


def table(result: dict[str, Any]) -> str:
    """The load rows and (if run) the cold CLI rows as Markdown; ratios to torch.load / stock."""
    from benchmarks.common import markdown_table

    gb = 1 << 30
    rows = {r["side"]: r for r in result["load"]}
    base = rows.get("torch.load", {}).get("seconds")
    base_cpu = rows.get("torch.load", {}).get("cpu_seconds")
    base_best = min(rows.get("torch.load", {}).get("runs") or [0.0])
    stock_digest = rows.get("stock", {}).get("digest")
    lines = []
    for side, r in rows.items():
        if "seconds" not in r:
            lines.append([side, f"failed: {r.get('error', '')}", *["-"] * 6])
            continue
        same = "-" if r["digest"] is None else ("yes" if r["digest"] == stock_digest else "NO")
        ratio = f"{r['seconds'] / base:.2f}" if base else "-"
        cpu = r.get("cpu_seconds")
        cpu_ratio = f"{cpu / base_cpu:.2f}" if cpu is not None and base_cpu else "-"
        peak = f"{r['peak_rss_bytes'] / gb:.2f} GB"
        runs = r.get("runs", [r["seconds"]])
        best = f"{min(runs) / base_best:.2f}" if base_best else "-"
        took = f"{r['seconds']:.2f} s" + (f" ({cpu:.2f} CPU s)" if cpu is not None else "")
        shown = ", ".join(f"{x:.2f}" for x in runs)
        lines.append([side, took, ratio, cpu_ratio, best, shown, peak, same])
    cfg = result["config"]
    text = (
        f"SAM {cfg['sam_arch']}, random weights, {cfg['sam_file_bytes'] / gb:.2f} GB file; "
        f"median of {cfg.get('repeat', 1)} fresh process(es) per side, sides interleaved.\n\n"
    )
    head = ["load", "call (median)", "/ torch.load", "CPU / torch.load", "best / best"]
    head += ["each run, s", "peak RSS", "equal to stock"]
    text = text + markdown_table(head, lines) if lines else ""
    if "cold" in result:
        cold = []
        for r in result["cold"]:
            diff = r.get("output_diff")
            shown = f"max {diff['max_abs_diff']}" if diff else "-"
            took = f"{r['wall_s']:.1f} s ({r['cpu_s']:.0f} CPU s)" if "wall_s" in r else "-"
            if len(r.get("runs", [])) > 1:
                took += " [" + ", ".join(f"{x['wall_s']:.0f}" for x in r["runs"]) + " s]"
            if r.get("status", "ok") != "ok" or "error" in r:
                took = f"{r.get('status', 'failed')}: {r.get('error', '')}"
            cold.append([r["side"], took, f"{r.get('peak_rss_bytes', 0) / gb:.2f} GB", shown])
        h, w = cfg["cold_shape"]
        text += (
            f"{chr(10) * 2 if text else ''}Cold `sam-deblur photo.jpg`, {w}x{h}, default "
            f"recipe, SAM {cfg['sam_arch']}, full-depth network, fp32 on "
            f"{cfg.get('device', 'cpu')}, process start to written output:\n\n"
        )
        text += markdown_table(["side", "wall", "peak RSS", "output vs ours"], cold)
    return text


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child-load"]:
        child_load(argv[1], Path(argv[2]), Path(argv[3]), Path(argv[4]))
        return 0
    if argv[:1] == ["--child-cli-old-loader"]:
        return child_cli_old_loader(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--smoke", action="store_true", help="tiny SAM, load rows only")
    mode.add_argument("--quick", action="store_true", help="SAM vit_b, load rows only")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per child run")
    parser.add_argument(
        "--repeat", type=int, default=3, help="rounds per side, interleaved (default 3)"
    )
    parser.add_argument(
        "--load-only", action="store_true", help="full mode: vit_h load rows, no cold CLI rows"
    )
    parser.add_argument(
        "--cold-only", action="store_true", help="full mode: the cold CLI rows, no load rows"
    )
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu", help="where the cold CLI rows run"
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if args.cold_only and (args.load_only or args.smoke or args.quick):
        parser.error("--cold-only runs the full mode's cold rows; drop the other mode option")
    if args.device == "cuda":
        from benchmarks.bench_e2e import require_cuda

        require_cuda()
    # A time-out upstream sends SIGTERM: exit normally so that the temporary folder goes.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    repeat = max(1, args.repeat)
    cold, load = not args.load_only, not args.cold_only
    result = run(
        mode, timeout=args.timeout, repeat=repeat, cold=cold, load=load, device=args.device
    )
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
