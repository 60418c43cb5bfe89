"""`sam-deblur IMAGE...` (the default command) and `sam-deblur batch IN_DIR -o OUT_DIR`.

Both are thin: they turn options into ``DeblurSettings`` / ``FileOptions``, plan the jobs,
and hand them to ``sam_deblur_cli.pipeline``. Human messages go to stderr, ``--json``
records (one line per input) to stdout. Heavy modules load inside the command bodies, so
``--help`` never imports torch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from sam_deblur_cli.cli.app import app, echo_json, err_console, fail
from sam_deblur_cli.errors import EXIT_INPUT, EXIT_INTERRUPTED, EXIT_OK, SamDeblurError

if TYPE_CHECKING:
    from sam_deblur_cli.pipeline import DeblurSettings, FileOptions, Job, Record

MODEL_PANEL = "Model and masks"
RUN_PANEL = "Device and speed"
FILE_PANEL = "Files"
AMG_PANEL = "Mask generator overrides (departures from the model's recipe)"

Model = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="Deblur model (see `sam-deblur weights list`).",
        rich_help_panel=MODEL_PANEL,
    ),
]
Sam = Annotated[
    str | None,
    typer.Option(
        "--sam",
        help="SAM entry to make masks with, instead of the recipe's.",
        rich_help_panel=MODEL_PANEL,
    ),
]
StockMasks = Annotated[
    bool,
    typer.Option(
        "--stock-masks",
        help="Use segment-anything's stock generator (slower).",
        rich_help_panel=MODEL_PANEL,
    ),
]
Tlc = Annotated[
    bool | None,
    typer.Option(
        "--tlc/--no-tlc",
        help="Test-time local converter (default: as the model entry says).",
        show_default=False,
        rich_help_panel=MODEL_PANEL,
    ),
]
Device = Annotated[
    str,
    typer.Option(
        "--device", "-d", help="auto, cpu, cuda, cuda:N or mps.", rich_help_panel=RUN_PANEL
    ),
]
RequireGpu = Annotated[
    bool,
    typer.Option(
        "--require-gpu", help="Fail instead of falling back to the CPU.", rich_help_panel=RUN_PANEL
    ),
]
Precision = Annotated[
    str,
    typer.Option(
        "--precision",
        help="auto, fp32, fp16 or bf16 (auto: fp32 on the CPU).",
        rich_help_panel=RUN_PANEL,
    ),
]
Tile = Annotated[
    str,
    typer.Option(
        "--tile",
        help="auto (tile only if memory is short), a tile size, or 0 (never).",
        rich_help_panel=RUN_PANEL,
    ),
]
Offline = Annotated[
    bool,
    typer.Option(
        "--offline", help="Never download; use the cache only.", rich_help_panel=RUN_PANEL
    ),
]
Overlay = Annotated[
    bool,
    typer.Option(
        "--overlay",
        help="Also write the mask overlay (<output>_overlay.png).",
        rich_help_panel=FILE_PANEL,
    ),
]
Overwrite = Annotated[
    bool,
    typer.Option(
        "--overwrite",
        help="Replace outputs that exist (default: skip them).",
        rich_help_panel=FILE_PANEL,
    ),
]
Format = Annotated[
    str | None,
    typer.Option(
        "--format",
        "-f",
        help="Output format: jpg, png, tif, webp or bmp (default: the input's).",
        rich_help_panel=FILE_PANEL,
    ),
]
Quality = Annotated[
    int,
    typer.Option(
        "--quality", min=1, max=100, help="JPEG / WebP quality.", rich_help_panel=FILE_PANEL
    ),
]
MaxPixels = Annotated[
    int | None,
    typer.Option(
        "--max-pixels",
        min=1,
        help="Refuse larger images (default: a guard against decompression bombs).",
        rich_help_panel=FILE_PANEL,
    ),
]
Json = Annotated[bool, typer.Option("--json", help="One JSON record per input on stdout.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Errors only.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Also log what happens (INFO).")]
PointsPerSide = Annotated[
    int | None,
    typer.Option(
        "--points-per-side", min=1, help="SAM point grid size.", rich_help_panel=AMG_PANEL
    ),
]
PredIou = Annotated[
    float | None,
    typer.Option(
        "--pred-iou-thresh", help="Keep masks above this predicted IoU.", rich_help_panel=AMG_PANEL
    ),
]
Stability = Annotated[
    float | None,
    typer.Option(
        "--stability-score-thresh",
        help="Keep masks above this stability.",
        rich_help_panel=AMG_PANEL,
    ),
]
ChannelOrder = Annotated[
    str | None,
    typer.Option(
        "--channel-order",
        help="Feed SAM rgb or bgr (the published models want bgr).",
        rich_help_panel=AMG_PANEL,
    ),
]


DEBLUR_HELP = (
    "Deblur photos: `sam-deblur photo.jpg` writes photo_deblurred.jpg beside it.\n\n"
    "Existing outputs are skipped unless --overwrite; inputs are never overwritten.\n\n"
    "Exit codes: 0 done, 1 some input failed, 2 usage or set-up error, 130 interrupted."
)
BATCH_HELP = (
    "Deblur every image of IN_DIR into OUT_DIR; a second run resumes (skips what exists).\n\n"
    "Outputs keep their input's name and sub-folder. When two inputs would share an output "
    "(a.png and a.jpg with --format png), both get their input extension added: "
    "a_png.png and a_jpg.png.\n\n"
    "Exit codes: 0 done, 1 some input failed (summary at the end), 2 usage or set-up error "
    "(found before any image is processed), 130 interrupted (no partial files are left)."
)


@app.command(name="deblur", help=DEBLUR_HELP)
def deblur_command(
    inputs: Annotated[
        list[Path], typer.Argument(help="Images to deblur.", metavar="IMAGE", show_default=False)
    ],
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            help="Output file (one input) or folder "
            "(default: <name>_deblurred.<ext> beside each input).",
        ),
    ] = None,
    masks: Annotated[
        Path | None,
        typer.Option(
            "--masks",
            help="Precomputed masks for the one input (segmask PNG or groups .npz); skips SAM.",
            rich_help_panel=MODEL_PANEL,
        ),
    ] = None,
    model: Model = "segnafnet-gopro",
    sam: Sam = None,
    stock_masks: StockMasks = False,
    tlc: Tlc = None,
    device: Device = "auto",
    require_gpu: RequireGpu = False,
    precision: Precision = "auto",
    tile: Tile = "auto",
    offline: Offline = False,
    overlay: Overlay = False,
    overwrite: Overwrite = False,
    format: Format = None,
    quality: Quality = 95,
    max_pixels: MaxPixels = None,
    json: Json = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
    points_per_side: PointsPerSide = None,
    pred_iou_thresh: PredIou = None,
    stability_score_thresh: Stability = None,
    channel_order: ChannelOrder = None,
) -> None:
    """Deblur photos (the default command: `sam-deblur photo.jpg`)."""
    settings_kw, file_kw = _split_options(locals())

    def plan() -> list[Job]:
        from sam_deblur_cli.pipeline import plan_files

        return plan_files(inputs, output, format=format, masks_file=masks)

    _run(plan, settings_kw, file_kw, json=json, quiet=quiet, verbose=verbose)


@app.command(name="batch", help=BATCH_HELP)
def batch_command(
    in_dir: Annotated[
        Path, typer.Argument(help="Folder of images.", metavar="IN_DIR", show_default=False)
    ],
    output: Annotated[
        str,
        typer.Option(
            "--output", "-o", help="Output folder (created if needed).", show_default=False
        ),
    ],
    recursive: Annotated[
        bool, typer.Option("--recursive", "-r", help="Include sub-folders; their tree is mirrored.")
    ] = False,
    model: Model = "segnafnet-gopro",
    sam: Sam = None,
    stock_masks: StockMasks = False,
    tlc: Tlc = None,
    device: Device = "auto",
    require_gpu: RequireGpu = False,
    precision: Precision = "auto",
    tile: Tile = "auto",
    offline: Offline = False,
    overlay: Overlay = False,
    overwrite: Overwrite = False,
    format: Format = None,
    quality: Quality = 95,
    max_pixels: MaxPixels = None,
    json: Json = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
    points_per_side: PointsPerSide = None,
    pred_iou_thresh: PredIou = None,
    stability_score_thresh: Stability = None,
    channel_order: ChannelOrder = None,
) -> None:
    """Deblur every image of a folder into another folder."""
    settings_kw, file_kw = _split_options(locals())

    def plan() -> list[Job]:
        from sam_deblur_cli.pipeline import plan_batch

        return plan_batch(in_dir, Path(output), recursive=recursive, format=format)

    _run(plan, settings_kw, file_kw, json=json, quiet=quiet, verbose=verbose)


# Options shared by both commands: which go to DeblurSettings, FileOptions, the AMG overrides.
_SETTINGS_OPTIONS: tuple[str, ...] = ("model", "sam", "channel_order", "device", "require_gpu")
_SETTINGS_OPTIONS += ("precision", "tile", "tlc", "offline")
_FILE_OPTIONS = ("format", "quality", "max_pixels", "overwrite", "overlay")
_AMG_OPTIONS = ("points_per_side", "pred_iou_thresh", "stability_score_thresh")


def _split_options(given: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A command's parameters -> (DeblurSettings kwargs, FileOptions kwargs)."""
    settings = {name: given[name] for name in _SETTINGS_OPTIONS}
    settings["fast_masks"] = not given["stock_masks"]
    settings["amg"] = {name: given[name] for name in _AMG_OPTIONS if given[name] is not None}
    return settings, {name: given[name] for name in _FILE_OPTIONS}


def _run(
    plan: Callable[[], list[Job]],
    settings_kw: dict[str, Any],
    file_kw: dict[str, Any],
    *,
    json: bool,
    quiet: bool,
    verbose: bool,
) -> None:
    """Shared body: set-up errors exit 2 before any image; failures of inputs exit 1."""
    try:
        with library_logging(verbose=verbose, quiet=quiet):
            from sam_deblur_cli.pipeline import DeblurSettings, FileOptions

            settings = DeblurSettings(**settings_kw)
            options = FileOptions(**file_kw)
            jobs = plan()
            records = _process(jobs, settings, options, json=json, quiet=quiet)
    except SamDeblurError as exc:
        raise fail(str(exc), exc.exit_code) from None
    except KeyboardInterrupt:
        raise fail(
            "interrupted; finished outputs are kept, none is left half-written", EXIT_INTERRUPTED
        ) from None
    failed = [r for r in records if r["status"] == "failed"]
    if len(failed) > 0 and len(records) > 1:
        _failure_table(failed, len(records))
    raise typer.Exit(EXIT_INPUT if failed else EXIT_OK)


def _process(
    jobs: Sequence[Job],
    settings: DeblurSettings,
    options: FileOptions,
    *,
    json: bool,
    quiet: bool,
) -> list[Record]:
    from sam_deblur_cli.pipeline import BatchCallbacks, Deblurrer, run_batch

    if not jobs:
        err_console.print("[yellow]No images found.[/]")
        return []
    # SAM only when some image has no mask file (and the model takes masks at all).
    uses_sam = any(job.masks_file is None for job in jobs)
    from contextlib import nullcontext

    from sam_deblur_cli.cli.weights import download_progress

    # First use downloads weights: a bar on a terminal (a 2.6 GB SAM must not look like a
    # hang); in logs and pipes the library's own log line says it.
    bar = not quiet and err_console.is_terminal
    with download_progress() if bar else nullcontext(None) as fetching:
        deblurrer = Deblurrer(settings, load_sam=uses_sam, progress=fetching)
    if uses_sam and deblurrer.needs_masks and not quiet:
        _print_departures(deblurrer.departures())
    # A live bar only on a terminal: in logs and pipes it would be noise.
    with _Progress(len(jobs), enabled=not quiet and err_console.is_terminal) as progress:

        def done(job: Job, record: Record) -> None:
            progress.advance(record)
            _report(record, json=json, quiet=quiet)

        return run_batch(
            deblurrer, jobs, options=options, callbacks=BatchCallbacks(progress.start, done)
        )


def _print_departures(notes: Sequence[str]) -> None:
    """The departures-from-recipe note: overrides make masks unlike the training masks."""
    if notes:
        text = " ".join(notes)
        err_console.print(
            f"[yellow]note:[/] {text} Results may be worse.", highlight=False, soft_wrap=True
        )


def _report(record: Record, *, json: bool, quiet: bool) -> None:
    if json:
        echo_json(record)
        return
    status = record["status"]
    if status == "ok" and not quiet:
        total = sum(record["seconds"].values())
        # stderr, like the progress bar it must print above; stdout is kept for --json.
        err_console.print(
            f"{record['input']} -> {record['output']} ({total:.1f} s)",
            highlight=False,
            soft_wrap=True,
        )
    elif status == "skipped" and not quiet:
        err_console.print(
            f"[yellow]skipped[/] {record['input']}: "
            f"{record['output']} exists (--overwrite replaces it)",
            highlight=False,
            soft_wrap=True,
        )
    elif status == "failed":
        err_console.print(
            f"[bold red]failed:[/] {record['input']}: {_reason(record)}",
            highlight=False,
            soft_wrap=True,
        )


def _reason(record: Record) -> str:
    """A failed record's error without the leading input path that many errors repeat."""
    error, prefix = str(record["error"]), f"{record['input']}: "
    return error.removeprefix(prefix)


def _failure_table(failed: Sequence[Record], total: int) -> None:
    """The end-of-run summary: every failed input (relative to their common folder)."""
    import os

    from rich.table import Table

    inputs = [str(record["input"]) for record in failed]
    root = os.path.dirname(inputs[0]) if len(inputs) == 1 else os.path.commonpath(inputs)
    table = Table(title=f"{len(failed)} of {total} input(s) failed", title_justify="left")
    table.add_column(f"input (in {root})" if root else "input", overflow="fold")
    table.add_column("error", overflow="fold")
    for path, record in zip(inputs, failed, strict=True):
        table.add_row(os.path.relpath(path, root) if root else path, _reason(record))
    err_console.print(table)


class _Progress:
    """Rich progress bar on stderr: count, ETA and the mean seconds of each stage so far."""

    def __init__(self, total: int, *, enabled: bool) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[stages]}"),
            console=err_console,
            disable=not enabled,
            transient=True,
        )
        self.task = self.progress.add_task("deblurring", total=total, stages="")
        self.totals: dict[str, float] = {}
        self.done = 0

    def __enter__(self) -> _Progress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def start(self, job: Job) -> None:
        self.progress.update(self.task, description=job.src.name)

    def advance(self, record: Record) -> None:
        from sam_deblur_cli.pipeline import STAGES

        if record["status"] == "ok":
            self.done += 1
            for stage, seconds in record["seconds"].items():
                self.totals[stage] = self.totals.get(stage, 0.0) + seconds
        means = " ".join(
            f"{stage} {self.totals[stage] / self.done:.1f}s"
            for stage in STAGES
            if stage in self.totals
        )
        self.progress.update(self.task, advance=1, stages=means)


@contextmanager
def library_logging(*, verbose: bool, quiet: bool) -> Iterator[None]:
    """Route the library's log records to stderr through Rich while a command runs.

    WARNING by default, INFO with -v, ERROR with -q. The handler and level are removed
    afterwards, so running commands in-process (tests, notebooks) leaves logging as it was.
    """
    from rich.logging import RichHandler

    logger = logging.getLogger("sam_deblur_cli")
    handler = RichHandler(console=err_console, show_time=False, show_path=False, markup=False)
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.ERROR if quiet else logging.INFO if verbose else logging.WARNING)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
