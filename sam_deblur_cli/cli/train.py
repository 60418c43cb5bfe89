"""`sam-deblur train`: train or fine-tune a SAM-Deblur network on paired photos.

Thin: parses options into a ``TrainConfig``, shows a progress bar with ETA, turns Ctrl-C
into a resumable stop, and prints where the model went. The work is ``sam_deblur_cli.train``
(imported inside the command, so `--help` stays instant). Under torchrun only rank 0 prints.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from sam_deblur_cli.cli.app import app
from sam_deblur_cli.cli.options import OUTPUT, Device, Precision, Quiet, Verbose
from sam_deblur_cli.cli.output import err_console, fail, library_logging, note, progress_bar, say
from sam_deblur_cli.errors import EXIT_INTERRUPTED, UsageError

if TYPE_CHECKING:
    from sam_deblur_cli.train.loop import Trainer

DATA_PANEL = "Data and masks"
MODEL_PANEL = "Network"
OPT_PANEL = "Optimisation"
RUN_PANEL = "Run folder"


@app.command("train")
def train_command(
    data: Path | None = typer.Argument(
        None,
        help="Training pairs in the upstream layout: input/ (blurred), target/ (sharp), "
        "optional input_mask/ or grouped_masks/; paired by file name.",
        show_default=False,
    ),
    run_dir: Path | None = typer.Option(
        None, *OUTPUT, help="New run folder (must not exist).", rich_help_panel=RUN_PANEL
    ),
    resume: Path | None = typer.Option(
        None, "--resume", help="Continue the run in this folder.", rich_help_panel=RUN_PANEL
    ),
    variant: str | None = typer.Option(
        None, "--variant", help="plain, cat or map.", rich_help_panel=MODEL_PANEL
    ),
    width: int = typer.Option(32, "--width", rich_help_panel=MODEL_PANEL),
    enc_blocks: str = typer.Option(
        "1,1,1,28", "--enc-blocks", help="NAFBlocks per encoder level.", rich_help_panel=MODEL_PANEL
    ),
    mask_dropout: float | None = typer.Option(
        None,
        "--mask-dropout",
        help="Default 0.5 for map, 0 otherwise.",
        rich_help_panel=MODEL_PANEL,
    ),
    init: str | None = typer.Option(
        None,
        "--init",
        help="Start from a checkpoint file or model name; a plain NAFNet may start a cat/map net.",
        rich_help_panel=MODEL_PANEL,
    ),
    tlc: bool = typer.Option(
        False,
        "--tlc/--no-tlc",
        help="TLC default of the registered model.",
        rich_help_panel=MODEL_PANEL,
    ),
    masks_from: str = typer.Option(
        "dataset",
        "--masks-from",
        help="dataset (mask files), sam (SAM once per image, cached) or predeblur:MODEL.",
        rich_help_panel=DATA_PANEL,
    ),
    crop: int = typer.Option(256, "--crop", help="Random crop size.", rich_help_panel=DATA_PANEL),
    val: Path | None = typer.Option(
        None, "--val", help="Held-out pairs, validated on whole images.", rich_help_panel=DATA_PANEL
    ),
    workers: int | None = typer.Option(
        None,
        "--workers",
        help="Data worker processes (default: the CPUs this process may use, at most 4).",
        show_default=False,
        rich_help_panel=DATA_PANEL,
    ),
    skip_bad_pairs: bool = typer.Option(
        False,
        "--skip-bad-pairs",
        help="Leave unusable files out instead of stopping.",
        rich_help_panel=DATA_PANEL,
    ),
    steps: int = typer.Option(200_000, "--steps", rich_help_panel=OPT_PANEL),
    batch: int = typer.Option(
        32, "--batch", help="GLOBAL batch per step (all GPUs x --accum).", rich_help_panel=OPT_PANEL
    ),
    accum: int = typer.Option(
        1, "--accum", help="Micro-batches accumulated per step.", rich_help_panel=OPT_PANEL
    ),
    lr: float = typer.Option(1e-3, "--lr", rich_help_panel=OPT_PANEL),
    ema: float = typer.Option(0.0, "--ema", help="EMA decay (0: off).", rich_help_panel=OPT_PANEL),
    seed: int = typer.Option(0, "--seed", rich_help_panel=OPT_PANEL),
    val_every: int = typer.Option(10_000, "--val-every", rich_help_panel=RUN_PANEL),
    save_every: int = typer.Option(5_000, "--save-every", rich_help_panel=RUN_PANEL),
    keep: int = typer.Option(
        2,
        "--keep",
        help="Numbered checkpoints kept besides last and best.",
        rich_help_panel=RUN_PANEL,
    ),
    name: str | None = typer.Option(
        None,
        "--name",
        help="Model name to register (default: the run folder's name).",
        rich_help_panel=RUN_PANEL,
    ),
    precision: Precision = "fp32",
    device: Device = "auto",
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Train a SAM-Deblur network (upstream's recipe by default); resumable with --resume."""
    from sam_deblur_cli.train.config import TrainConfig
    from sam_deblur_cli.train.run import train_run

    cfg = None
    if resume is None:
        if data is None or run_dir is None or variant is None:
            raise fail("Pass DATA_DIR -o RUN_DIR --variant plain|cat|map, or --resume RUN_DIR.", 2)
        cfg = TrainConfig(
            data=str(data),
            run_dir=str(run_dir),
            variant=variant,
            width=width,
            enc_blocks=_blocks(enc_blocks),
            dec_blocks=(1,) * len(_blocks(enc_blocks)),
            mask_dropout=mask_dropout,
            steps=steps,
            batch=batch,
            accum=accum,
            crop=crop,
            lr=lr,
            ema=ema,
            precision="fp32" if precision == "auto" else precision,
            device=device,
            init=init,
            masks_from=masks_from,
            val=str(val) if val else None,
            val_every=val_every,
            save_every=save_every,
            keep=keep,
            seed=seed,
            workers=default_workers() if workers is None else workers,
            name=name,
            tlc=tlc,
            skip_bad_pairs=skip_bad_pairs,
        )
    elif data is not None or run_dir is not None:
        raise fail("--resume continues a run with its saved settings; drop DATA_DIR and -o.", 2)
    main_rank = os.environ.get("RANK", "0") == "0"
    show = main_rank and not quiet
    with library_logging(verbose=verbose, quiet=quiet), progress_bar(enabled=show) as bar:
        task = bar.add_task("reading pairs", total=None)
        state: dict[str, Any] = {}
        outcome = train_run(
            cfg,
            resume=resume,
            callbacks=_callbacks(bar, task),
            progress=lambda done, total, _n: bar.update(task, completed=done, total=total),
            on_issue=lambda issue: note(f"{issue.name}: {issue.reason}") if show else None,
            trainer_hook=lambda trainer: _catch_ctrl_c(trainer, state),
        )
    if not main_rank:
        return
    result, folder = outcome.result, outcome.config.run_dir
    if result.interrupted:
        say(
            f"stopped at step {result.step} of {result.steps}; continue with "
            f"`sam-deblur train --resume {folder}`"
        )
        raise typer.Exit(EXIT_INTERRUPTED)
    best = f", best validation PSNR {result.best_psnr:.2f} dB" if result.best_psnr else ""
    say(f"trained {result.steps} steps{best}; model: {outcome.model_path}")
    if outcome.registered:
        say(f"registered as {outcome.registered}: `sam-deblur PHOTO --model {outcome.registered}`")


def default_workers() -> int:
    """Data workers by default: what the machine gives this process, at most 4 (more workers
    than CPUs only compete for them, and torch warns)."""
    import os

    affinity = getattr(os, "sched_getaffinity", None)
    cpus = len(affinity(0)) if affinity is not None else (os.cpu_count() or 1)
    return min(4, cpus)


def _blocks(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise UsageError(f"--enc-blocks {text!r} must be counts like 1,1,1,28.") from None


def _callbacks(bar: Any, task: Any) -> Any:
    from sam_deblur_cli.train.loop import Callbacks

    def start(step: int, total: int, description: str) -> None:
        say(f"training: {description}")
        bar.update(task, description="training", completed=step, total=total)

    def logged(row: dict[str, Any]) -> None:
        val = f" | val {float(row['val_psnr']):.2f} dB" if row["val_psnr"] else ""
        loss = f"loss {float(row['loss']):.2f}" if row["loss"] else "training"
        bar.update(task, description=f"{loss}{val}")

    return Callbacks(
        on_start=start,
        on_step=lambda step, total: bar.update(task, completed=step),
        on_log=logged,
        on_message=lambda text: say(text),
    )


def _catch_ctrl_c(trainer: Trainer, state: dict[str, Any]) -> None:
    """The first Ctrl-C stops at the next step boundary with a resumable checkpoint; a
    second one interrupts at once."""

    def handler(_signum: int, _frame: Any) -> None:
        trainer.request_stop()
        err_console.print("stopping after this step (Ctrl-C again to abort)")
        signal.signal(signal.SIGINT, state.get("previous") or signal.default_int_handler)

    state["previous"] = signal.signal(signal.SIGINT, handler)
