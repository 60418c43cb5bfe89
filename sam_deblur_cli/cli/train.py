"""`sam-deblur train`: train or fine-tune a SAM-Deblur network on paired photos.

Thin: parses options into a ``TrainConfig``, shows a progress bar with ETA, turns Ctrl-C
into a resumable stop, and prints where the model went. The work is ``sam_deblur_cli.train``
(imported inside the command, so `--help` stays instant). Under torchrun only rank 0 prints.
The options are ``cli/options.py``'s train group (:class:`TrainOptions`).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from sam_deblur_cli.cli.app import app
from sam_deblur_cli.cli.options import (
    OUTPUT,
    TRAIN_RUN_PANEL,
    Device,
    Precision,
    Quiet,
    TrainOptions,
    Verbose,
    takes_groups,
)
from sam_deblur_cli.cli.output import (
    err_console,
    fail,
    library_logging,
    note,
    progress_bar,
    say,
)
from sam_deblur_cli.errors import EXIT_INTERRUPTED, UsageError

if TYPE_CHECKING:
    from sam_deblur_cli.train.config import TrainConfig
    from sam_deblur_cli.train.loop import Trainer
    from sam_deblur_cli.train.session import RunOutcome


@app.command("train")
@takes_groups
def train_command(
    data: Path | None = typer.Argument(
        None,
        help="Training pairs in the upstream layout: input/ (blurred), target/ (sharp), "
        "optional input_mask/ or grouped_masks/; paired by file name.",
        show_default=False,
    ),
    run_dir: Path | None = typer.Option(
        None, *OUTPUT, help="New run folder (must not exist).", rich_help_panel=TRAIN_RUN_PANEL
    ),
    resume: Path | None = typer.Option(
        None,
        "--resume",
        help="Continue the run in this folder.",
        rich_help_panel=TRAIN_RUN_PANEL,
    ),
    *,
    train: TrainOptions,
    precision: Precision = "fp32",
    device: Device = "auto",
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Train a SAM-Deblur network (upstream's recipe by default); resumable with --resume."""
    from sam_deblur_cli.train.session import train_run

    cfg = None
    if resume is None:
        if data is None or run_dir is None or train.net.variant is None:
            raise fail("Pass DATA_DIR -o RUN_DIR --variant plain|cat|map, or --resume RUN_DIR.", 2)
        cfg = _config(data, run_dir, train, precision=precision, device=device)
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
    if main_rank:
        _report(outcome)


def _config(
    data: Path, run_dir: Path, train: TrainOptions, *, precision: str, device: str
) -> TrainConfig:
    """The configuration of a new run from the command line."""
    from sam_deblur_cli.nets import NetConfig
    from sam_deblur_cli.train.config import TrainConfig

    net, feed, opt, run = train.net, train.data, train.opt, train.run
    blocks = _blocks(net.enc_blocks)
    return TrainConfig(
        data=str(data),
        run_dir=str(run_dir),
        net=NetConfig(
            variant=net.variant,  # type: ignore[arg-type]  # train.config.check refuses others
            width=net.width,
            enc_blk_nums=blocks,
            dec_blk_nums=(1,) * len(blocks),
        ),
        mask_dropout=net.mask_dropout,
        steps=opt.steps,
        batch=opt.batch,
        accum=opt.accum,
        crop=feed.crop,
        lr=opt.lr,
        ema=opt.ema,
        precision="fp32" if precision == "auto" else precision,
        device=device,
        init=net.init,
        masks_from=feed.masks_from,
        val=str(feed.val) if feed.val else None,
        val_every=run.val_every,
        save_every=run.save_every,
        keep=run.keep,
        seed=opt.seed,
        workers=feed.loader_workers,
        name=run.name,
        tlc=net.registered_tlc,
        skip_bad_pairs=feed.skip_bad_pairs,
    )


def _report(outcome: RunOutcome) -> None:
    """Where the run ended and where its model went (rank 0)."""
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
