"""End to end: `sam-deblur photo -o out.png` versus the stock pipeline, wall time and peak RSS.

Both sides use the same random-weight models of the real architectures (timing does not
depend on weight values): SAM vit_b (vit_h with ``--vit-h``) and SegNAFNet width 32 with one
block per level, enc [1, 1, 1, 1] (``segnafnet-shallow``: the default model's 28-block
fourth level works on 1/64 of the pixels; bench_network compares that full depth). Ours is
the real CLI in a child process, its models installed with `sam-deblur weights import`
behind a benchmark manifest (``SAM_DEBLUR_WEIGHTS``) and a fresh cache
(``SAM_DEBLUR_HOME``). The stock side is ``stock_pipeline.py`` in a child process under an
address-space cap, so that its out-of-memory is reported, not a crash. Peak RSS and CPU time
are the child's own (``os.wait4``); wall time includes start-up.

Masks: with random SAM weights almost no mask passes the default thresholds, so both
pipelines get SAM's decoder output replaced by ``bench_masks.ControlledLogits`` (~300
realistic survivors, the same masks on both sides); in our child ``--child-cli`` installs
it, then runs ``sam_deblur_cli.cli.main`` in-process (the console script's code path).

Cases (the shallow network throughout, see ``cases_for``): --smoke: tiny SAM and network,
64 x 96; --quick: 360p; full: 720p, 12 MP with default settings (the stock side estimated),
then 12 MP again with ``--tile 1024`` (its masks from our cache).
``--device cuda`` adds ours in fp16 and bf16.

    python -m benchmarks.bench_e2e [--smoke | --quick] [--vit-h] [--device cpu|cuda]
                                   [--json PATH] [--keep DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

GB = 1 << 30
STOCK_CAP = 22 * GB  # address space of the stock child (torch alone maps ~4 GB of it)
VIRTUAL_SLACK = 4 * GB  # mapped but never resident (libraries): allowed above MemAvailable
MODEL = "segnafnet-gopro"  # the full-depth network, under the default model's name
SHALLOW = "segnafnet-shallow"  # same width, one block per level: for 12 MP without tiling
FULL_NET = {
    "width": 32,
    "enc_blk_nums": [1, 1, 1, 28],
    "middle_blk_num": 1,
    "dec_blk_nums": [1, 1, 1, 1],
    "seg_channel": 2,
}
SHALLOW_NET = {**FULL_NET, "enc_blk_nums": [1, 1, 1, 1]}
TINY_NET = {**SHALLOW_NET, "width": 8}
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Case:
    """One photo size; ``ours_args`` are extra CLI options (e.g. tiling).

    ``stock``: "run" the stock pipeline, "estimate" its dense-MAP memory from our group
    count instead (when running it would only spend minutes before certainly not fitting),
    or "skip" (a second variant of ours on the same photo). ``cached_masks``: keep our mask
    cache from the previous case on the same photo (the second run of a photo hits it, as
    it does for a user); otherwise the cache is emptied first.
    """

    name: str
    shape: tuple[int, int]  # H, W
    ours_args: tuple[str, ...] = ()
    stock: str = "run"
    precision: str = "fp32"
    model: str = MODEL
    cached_masks: bool = False


@dataclass
class Models:
    """Saved random-weight models and the benchmark manifest / cache they are imported into.

    ``nets``: deblur entry name -> (BasicSR checkpoint file, architecture arguments).
    """

    root: Path
    sam_arch: str
    sam_file: Path
    nets: dict[str, tuple[Path, dict[str, Any]]]
    amg: dict[str, Any]

    @property
    def manifest(self) -> Path:
        return self.root / "weights.toml"

    @property
    def home(self) -> Path:
        return self.root / "home"

    def env(self) -> dict[str, str]:
        """Environment of every child: this manifest and cache, the repo importable."""
        env = dict(os.environ)
        env.update(SAM_DEBLUR_WEIGHTS=str(self.manifest), SAM_DEBLUR_HOME=str(self.home))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env.setdefault("COLUMNS", "200")
        return env


@dataclass
class Measured:
    """A finished child: exit status, wall and CPU seconds, peak RSS (bytes), its output files."""

    returncode: int
    wall_s: float
    cpu_s: float
    peak_rss_bytes: int
    timed_out: bool
    stdout: Path = field(repr=False)
    stderr: Path = field(repr=False)

    def last_error(self) -> str:
        lines = [ln for ln in self.stderr.read_text(errors="replace").splitlines() if ln.strip()]
        return lines[-1][:300] if lines else f"exit status {self.returncode}"


# --------------------------------------------------------------------------- set-up


def stock_amg() -> dict[str, Any]:
    """The generator settings the shipped ``MODEL``'s recipe names, at the defaults of
    segment_anything's ``SamAutomaticMaskGenerator``: what a user of the stock generator
    gets, read from the library rather than restated."""
    import inspect

    from segment_anything import SamAutomaticMaskGenerator

    from sam_deblur_cli.weights import load_manifest

    recipe = load_manifest(REPO / "weights.toml").get(MODEL).recipe
    assert recipe is not None
    params = inspect.signature(SamAutomaticMaskGenerator.__init__).parameters
    return {key: params[key].default for key in recipe.amg}


def manifest_text(sam_arch: str, nets: dict[str, dict[str, Any]], amg: dict[str, Any]) -> str:
    """weights.toml: one SAM entry and the SegNAFNet entries ``nets``, all imported by hand."""
    amg_lines = "\n".join(f"{key} = {value}" for key, value in amg.items())
    text = f"""schema = 1

[recipes.bench]
sam = "bench-sam"
channel_order = "bgr"

[recipes.bench.amg]
{amg_lines}

[models.bench-sam]
kind = "sam"
arch = "{sam_arch}"
license = "Apache-2.0"
homepage = "https://github.com/facebookresearch/segment-anything"
source = {{ page = "https://example.invalid/benchmark", file = "sam.pth" }}
"""
    for name, net in nets.items():
        arch = ", ".join(f"{k} = {json.dumps(v)}" for k, v in net.items())
        text += f"""
[models.{name}]
kind = "deblur"
license = "Apache-2.0"
homepage = "https://github.com/HPLQAQ/SAM-Deblur"
source = {{ page = "https://example.invalid/benchmark", file = "{name}.pth" }}
recipe = "bench"
tlc = true
net = {{ variant = "map", {arch} }}
"""
    return text


def save_sam(path: Path, sam_arch: str) -> Path:
    """A random-weight SAM of ``sam_arch`` as a bare state dict (like SAM's own files)."""
    import torch
    from segment_anything import sam_model_registry

    torch.manual_seed(0)
    torch.save(sam_model_registry[sam_arch](checkpoint=None).state_dict(), path)
    return path


def save_network(path: Path, net: dict[str, Any]) -> Path:
    """A random-weight SegNAFNet saved the BasicSR way (``{"params": state_dict}``)."""
    import torch

    from sam_deblur_cli.nets import NetConfig, build_network

    torch.manual_seed(0)
    cfg = NetConfig(
        variant="map",
        width=net["width"],
        enc_blk_nums=tuple(net["enc_blk_nums"]),
        middle_blk_num=net["middle_blk_num"],
        dec_blk_nums=tuple(net["dec_blk_nums"]),
        seg_channel=net["seg_channel"],
    )
    model = build_network(cfg)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("beta", "gamma")):
                # NAFNet zero-initialises them, which makes every block an identity and the
                # output comparison between the two pipelines meaningless.
                param.normal_(0.0, 0.1)
    torch.save({"params": model.state_dict()}, path)
    return path


def prepare_models(
    root: Path, *, sam_arch: str, nets: dict[str, dict[str, Any]], amg: dict[str, Any]
) -> Models:
    """Build and save the models, write the manifest, import each with the real CLI."""
    from benchmarks.stock_pipeline import TINY_ARCH, register_tiny_arch

    if sam_arch == TINY_ARCH:
        register_tiny_arch()
    sam_file = save_sam(root / "sam.pth", sam_arch)
    files = {name: (save_network(root / f"{name}.pth", net), net) for name, net in nets.items()}
    models = Models(root, sam_arch, sam_file, files, amg)
    models.manifest.write_text(manifest_text(sam_arch, nets, amg))
    for name, file in [("bench-sam", sam_file), *((n, f) for n, (f, _) in files.items())]:
        code = _cli_in_env(models, ["weights", "import", name, str(file)])
        if code != 0:
            raise RuntimeError(f"`sam-deblur weights import {name} {file}` exited with {code}")
    return models


def _cli_in_env(models: Models, argv: list[str]) -> int:
    """The real CLI in this process, with the benchmark manifest and cache in force."""
    from sam_deblur_cli.cli import main as cli_main

    saved = {k: os.environ.get(k) for k in ("SAM_DEBLUR_WEIGHTS", "SAM_DEBLUR_HOME")}
    os.environ.update(SAM_DEBLUR_WEIGHTS=str(models.manifest), SAM_DEBLUR_HOME=str(models.home))
    try:
        return cli_main(argv)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def write_photo(path: Path, shape: tuple[int, int]) -> Path:
    """skimage's astronaut resized to H x W, as an 8-bit PNG."""
    import cv2

    from benchmarks.bench_masks import test_image

    cv2.imwrite(str(path), test_image(shape)[:, :, ::-1])
    return path


# --------------------------------------------------------------------------- measuring


def measure(cmd: Sequence[str], *, env: dict[str, str], logs: Path, timeout: float) -> Measured:
    """Run ``cmd`` to completion; its peak RSS and CPU time come from ``wait4``.

    ``wait4`` reports this one child (and any descendants it waited for), so runs measured
    one after the other never see each other's peaks.
    """
    stdout, stderr = logs.with_suffix(".out"), logs.with_suffix(".err")
    with stdout.open("wb") as out, stderr.open("wb") as err:
        start = time.perf_counter()
        # Same process group as this script, so that the orchestrator's time-out reaches it.
        proc = subprocess.Popen(list(cmd), env=env, stdout=out, stderr=err, cwd=REPO)
        expired = threading.Event()
        timer = threading.Timer(timeout, _kill, (proc.pid, expired))
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - start
    proc.returncode = code = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    cpu = usage.ru_utime + usage.ru_stime
    return Measured(code, wall, cpu, usage.ru_maxrss * 1024, expired.is_set(), stdout, stderr)


def _kill(pid: int, expired: threading.Event) -> None:
    expired.set()
    with contextlib.suppress(ProcessLookupError):  # it ended just now
        os.kill(pid, signal.SIGKILL)  # our children run the CLI in-process: no grandchildren


def stock_cap_bytes() -> int:
    """Address-space cap for the stock child: 22 GB, less when the machine has less free."""
    from benchmarks.common import mem_available_bytes

    available = mem_available_bytes()
    return min(STOCK_CAP, available + VIRTUAL_SLACK) if available else STOCK_CAP


def ours_command(models: Models, case: Case, photo: Path, out: Path, device: str) -> list[str]:
    """`sam-deblur PHOTO -o OUT --model M ...` through the ``--child-cli`` runner (controlled
    logits, and the smoke SAM's registration, installed before the CLI runs)."""
    argv = [
        str(photo),
        "-o",
        str(out),
        "--model",
        case.model,
        "--json",
        "--overwrite",
        "--device",
        device,
        "--precision",
        case.precision,
        *case.ours_args,
    ]
    runner = [sys.executable, "-m", "benchmarks.bench_e2e", "--child-cli"]
    hook = f"--controlled={case.shape[0]}x{case.shape[1]}"
    return [*runner, hook, f"--sam-arch={models.sam_arch}", "--", *argv]


def run_ours(
    models: Models, case: Case, photo: Path, work: Path, device: str, timeout: float
) -> dict[str, Any]:
    """Our CLI on ``photo`` (the mask cache emptied first unless ``case.cached_masks``):
    wall, CPU, peak RSS, its record."""
    if not case.cached_masks:
        shutil.rmtree(models.home / "masks", ignore_errors=True)
    out = work / f"ours-{_slug(case)}.png"
    cmd = ours_command(models, case, photo, out, device)
    m = measure(cmd, env=models.env(), logs=work / f"ours-{_slug(case)}", timeout=timeout)
    result = _side(m)
    if m.returncode == 0:
        try:
            record = json.loads(m.stdout.read_text().strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            return {**result, "status": "failed", "error": "no JSON record on stdout"}
        result.update(
            seconds=record.get("seconds", {}),
            masks=record.get("masks"),
            groups=record.get("groups"),
            tile=record.get("tile"),
            output=str(out),
        )
    return result


def run_stock(
    models: Models, case: Case, photo: Path, work: Path, device: str, timeout: float
) -> dict[str, Any]:
    """The stock pipeline on ``photo`` in a capped child: wall, CPU, peak RSS, status (ok/oom)."""
    base = work / f"stock-{_slug(case)}"
    out, spec_file, result_file = (base.with_suffix(s) for s in (".png", ".spec", ".result"))
    net_file, net = models.nets[case.model]
    # CUDA reserves far more address space than it uses, so no cap there; the GPU's own
    # out-of-memory is an exception anyway.
    cap = 0 if device.startswith("cuda") else stock_cap_bytes()
    spec = {
        "image": str(photo),
        "output": str(out),
        "sam_arch": models.sam_arch,
        "sam_checkpoint": str(models.sam_file),
        "net_checkpoint": str(net_file),
        "net": net,
        "tlc": True,
        "amg": models.amg,
        "device": device,
        "controlled": True,
        "memory_cap_bytes": cap,
    }
    spec_file.write_text(json.dumps(spec))
    cmd = [sys.executable, "-m", "benchmarks.stock_pipeline", str(spec_file), str(result_file)]
    m = measure(cmd, env=models.env(), logs=base, timeout=timeout)
    result = _side(m)
    result.update(memory_cap_bytes=cap, model=case.model)
    if m.returncode == 0:
        result.update(json.loads(result_file.read_text()))
        if result["status"] == "ok":
            result["output"] = str(out)
    elif m.returncode == -signal.SIGKILL and not m.timed_out:
        result.update(status="oom", stage="?", error="killed by SIGKILL (the kernel's OOM killer?)")
    return result


def _side(m: Measured) -> dict[str, Any]:
    status = "ok" if m.returncode == 0 else ("timeout" if m.timed_out else "failed")
    side: dict[str, Any] = {
        "status": status,
        "wall_s": m.wall_s,
        "cpu_s": m.cpu_s,
        "peak_rss_bytes": m.peak_rss_bytes,
    }
    if status != "ok":
        side["error"] = m.last_error()
    return side


def _slug(case: Case) -> str:
    return "".join(c if c.isalnum() else "_" for c in case.name).strip("_")


def estimate_stock(case: Case, ours: dict[str, Any]) -> dict[str, Any]:
    """What the stock dense MAP alone allocates for our group count (same masks by
    construction): ``bench_map.dense_bytes`` of the padded photo. The stock generator's own
    peak comes before it (see the mask-stage section)."""
    from benchmarks.bench_map import dense_bytes

    groups = ours.get("groups")
    if not groups:
        return {"status": "skipped", "error": "our run gave no group count to estimate with"}
    h, w = (-(-n // 16) * 16 for n in case.shape)
    needs = dense_bytes(h, w, groups)
    status = "does_not_fit" if needs > STOCK_CAP else "estimated"
    return {"status": status, "needs_bytes": needs, "memory_cap_bytes": STOCK_CAP, "groups": groups}


def compare_outputs(a: str | None, b: str | None) -> dict[str, float] | None:
    """Max and mean absolute difference of two uint8 outputs (None if one is missing)."""
    import cv2
    import numpy as np

    images = [cv2.imread(p, cv2.IMREAD_COLOR) if p else None for p in (a, b)]
    if images[0] is None or images[1] is None:
        return None
    diff = np.abs(images[0].astype(np.int16) - images[1].astype(np.int16))
    return {"max_abs_diff": int(diff.max()), "mean_abs_diff": float(diff.mean())}


# --------------------------------------------------------------------------- cases


def cases_for(mode: str, device: str) -> list[Case]:
    """The cases of a mode. At 12 MP the stock side is estimated, not run: its mask stage
    alone takes minutes on 2 cores (measured in the mask-stage section) before its dense MAP
    certainly does not fit. Every case uses the shallow network, and the tiled 12 MP run
    takes its masks from the cache the run before filled: the whole benchmark has to fit in
    20 minutes on 2 cores, and the network section compares the full-depth forwards."""
    hd, mp12 = (720, 1280), (3000, 4000)
    if mode == "smoke":
        return [Case("smoke 64x96 controlled", (64, 96))]
    if mode == "quick":  # 360p and the shallow network keep --quick within its few minutes
        return _with_precisions([Case("360p controlled", (360, 640), model=SHALLOW)], device)
    cases = [Case("720p controlled", hd, model=SHALLOW)]
    if mode == "full":
        cases += [
            Case("12 MP controlled, shallow net", mp12, stock="estimate", model=SHALLOW),
            Case(
                "12 MP controlled, shallow net, --tile 1024, masks cached",
                mp12,
                ("--tile", "1024"),
                stock="skip",
                model=SHALLOW,
                cached_masks=True,
            ),
        ]
    return _with_precisions(cases, device)


def _with_precisions(cases: list[Case], device: str) -> list[Case]:
    """On CUDA, each case again with ours in fp16 and bf16 (the stock code is fp32 only)."""
    if device != "cuda":
        return cases
    halves = [
        Case(f"{c.name}, {p}", c.shape, c.ours_args, "skip", p, c.model, c.cached_masks)
        for c in cases
        for p in ("fp16", "bf16")
    ]
    return cases + halves


def run_case(
    models: Models,
    case: Case,
    work: Path,
    device: str,
    timeout: float,
    stock_of: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """Both sides of one case (a "skip" case shows the stock result of the same photo, if
    any); ratios are ours / stock, given when both ran the same network."""
    photo = work / f"photo-{case.shape[0]}x{case.shape[1]}.png"
    if not photo.exists():
        write_photo(photo, case.shape)
    ours = run_ours(models, case, photo, work, device, timeout)
    key = str(case.shape)
    if case.stock == "run":
        stock_of[key] = run_stock(models, case, photo, work, device, timeout)
    elif case.stock == "estimate":
        stock_of[key] = estimate_stock(case, ours)
    stock = stock_of.get(key, {"status": "skipped"})
    row: dict[str, Any] = {"case": asdict(case), "ours": ours, "stock": stock}
    if ours["status"] == stock["status"] == "ok" and stock["model"] == case.model:
        row["ratio_time"] = ours["wall_s"] / stock["wall_s"]
        row["ratio_cpu"] = ours["cpu_s"] / stock["cpu_s"]
        row["ratio_rss"] = ours["peak_rss_bytes"] / max(stock["peak_rss_bytes"], 1)
        row["output_diff"] = compare_outputs(ours.get("output"), stock.get("output"))
    return row


def run(
    mode: str,
    *,
    vit_h: bool = False,
    device: str = "cpu",
    timeout: float = 1800,
    keep: Path | None = None,
    partial: Path | None = None,
) -> dict[str, Any]:
    """Set up the models, run every case of ``mode``; the JSON-able result.

    ``partial``: rewritten after every case (``"complete": false``), so that a run stopped
    part-way keeps the cases it finished.
    """
    import torch

    from benchmarks.stock_pipeline import TINY_ARCH

    smoke = mode == "smoke"
    sam_arch = TINY_ARCH if smoke else ("vit_h" if vit_h else "vit_b")
    nets = {MODEL: TINY_NET} if smoke else {SHALLOW: SHALLOW_NET}
    amg = {**stock_amg(), "points_per_side": 4} if smoke else stock_amg()
    config: dict[str, Any] = {
        "mode": mode,
        "sam_arch": sam_arch,
        "nets": nets,
        "amg": amg,
        "device": device,
        "tlc": True,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "stock_cap_bytes": STOCK_CAP,
    }
    result: dict[str, Any] = {"config": config, "cases": [], "complete": False}
    with tempfile.TemporaryDirectory(prefix="sam-deblur-e2e-") as tmp:
        work = keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        models = prepare_models(work, sam_arch=sam_arch, nets=nets, amg=amg)
        config["setup_s"] = time.perf_counter() - start
        stock_of: dict[str, dict[str, Any]] = {}
        for case in cases_for(mode, device):
            result["cases"].append(run_case(models, case, work, device, timeout, stock_of))
            if partial is not None:
                partial.write_text(json.dumps(result, indent=2) + "\n")
    result["complete"] = True
    return result


# --------------------------------------------------------------------------- child runner


def child_cli(argv: list[str]) -> int:
    """``--child-cli [--controlled=HxW] [--sam-arch=A] -- CLI ARGS``: hooks, then the real CLI."""
    parser = argparse.ArgumentParser(prog="bench_e2e --child-cli")
    parser.add_argument("--controlled", help="H x W of the photo: decoder output replaced")
    parser.add_argument("--sam-arch", default="vit_b")
    split = argv.index("--") if "--" in argv else len(argv)
    opts = parser.parse_args(argv[:split])
    from benchmarks.stock_pipeline import TINY_ARCH, controlled_logits, register_tiny_arch

    if opts.sam_arch == TINY_ARCH:
        register_tiny_arch()
    if opts.controlled:
        from benchmarks.bench_masks import patch_fast
        from sam_deblur_cli.masks.fast import FastMaskGenerator

        h, w = (int(v) for v in opts.controlled.split("x"))
        logits = controlled_logits((h, w))
        init = FastMaskGenerator.__init__

        def patched_init(self: FastMaskGenerator, *args: Any, **kwargs: Any) -> None:
            init(self, *args, **kwargs)
            patch_fast(self, logits)

        FastMaskGenerator.__init__ = patched_init  # type: ignore[method-assign]
    from sam_deblur_cli.cli import main as cli_main

    return cli_main(argv[split + 1 :])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child-cli"]:
        return child_cli(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--smoke", action="store_true", help="tiny models, one 64 x 96 photo")
    mode.add_argument("--quick", action="store_true", help="360p only, shallow network")
    parser.add_argument("--vit-h", action="store_true", help="SAM vit_h instead of vit_b")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per child run")
    parser.add_argument("--keep", type=Path, help="keep models, photos and outputs here")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if args.device == "cuda":
        require_cuda()
    # A time-out upstream sends SIGTERM: exit normally so that the temporary folder (models
    # and photos, up to GBs) is removed; the children get the signal too.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    result = run(
        "smoke" if args.smoke else "quick" if args.quick else "full",
        vit_h=args.vit_h,
        device=args.device,
        timeout=args.timeout,
        keep=args.keep,
        partial=args.json,
    )
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def require_cuda() -> None:
    """Exit with one clear line when ``--device cuda`` is asked for on a machine without it."""
    import torch

    if not torch.cuda.is_available():
        raise SystemExit(
            "--device cuda needs a CUDA GPU, and torch sees none here; use --device cpu."
        )


if __name__ == "__main__":
    sys.exit(main())
