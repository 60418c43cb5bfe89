"""`sam-deblur eval`: the paper's table (PSNR / SSIM / MCR) on a paired dataset.

Thin: parses options, shows progress on stderr and the table (or, with --json, the report
as one JSON line) on stdout, writes the CSV/JSON report files and picks the exit code (0 all
evaluated, 1 some skipped, 2 set-up). The work happens in ``sam_deblur_cli.evaluate``,
imported inside the command. ``eval --json PATH``, the old spelling of ``--json-out PATH``,
is rewritten before parsing (``options.EvalCommand``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from sam_deblur_cli.cli.app import app
from sam_deblur_cli.cli.options import (
    DEFAULT_MODEL,
    EvalCommand,
    EvalOptions,
    Models,
    OutputMode,
    takes_groups,
)
from sam_deblur_cli.cli.output import (
    cell,
    console,
    echo_json,
    escape,
    library_logging,
    nothing_to_do,
    progress_bar,
    say,
)
from sam_deblur_cli.errors import EXIT_INPUT, NothingToDoError

if TYPE_CHECKING:
    from rich.table import Table

    from sam_deblur_cli.datasets import Dataset
    from sam_deblur_cli.evaluate import EvalResult, EvalSettings, ModelSummary


EVAL_HELP = (
    "Measure models on blurred/sharp pairs: PSNR, SSIM and mode-collapse rate.\n\n"
    "The defaults are the paper's protocol: fp32 with TF32 off and whole images (--tile 0: "
    "an image that does not fit is skipped).\n\n"
    "The table goes to stdout; --json prints the report (what --json-out writes) there "
    "instead, as one JSON line. The old `--json PATH` still names the report file.\n\n"
    "Exit codes: 0 every pair evaluated, 1 some skipped, 2 usage or set-up error, "
    "3 nothing to do (no image in the dataset)."
)


@app.command("eval", cls=EvalCommand, help=EVAL_HELP)
@takes_groups
def eval_command(
    source: Annotated[
        Path,
        typer.Argument(
            help="Dataset root in the upstream layout (input/, target/, optional input_mask/, "
            "grouped_masks/; or test/ holding them), or a folder of blurred images.",
            show_default=False,
        ),
    ],
    sharp: Annotated[
        Path | None,
        typer.Argument(
            help="Folder of sharp images, when SOURCE is a folder of blurred ones.",
            show_default=False,
        ),
    ] = None,
    *,
    model: Models = [DEFAULT_MODEL],  # noqa: B006 (Typer copies the default)
    protocol: EvalOptions,
    out: OutputMode,
) -> None:
    """Measure models on blurred/sharp pairs: PSNR, SSIM and mode-collapse rate."""
    from sam_deblur_cli.datasets import open_dataset
    from sam_deblur_cli.evaluate import EvalSettings, check_writable

    p = protocol
    with library_logging(verbose=out.verbose, quiet=out.quiet):
        value = _parse_mask_value(p.mask_value)
        dataset = open_dataset(source, sharp)
        for report in (p.csv_path, p.json_path):
            if report is not None:
                check_writable(report)
        settings = EvalSettings(
            models=tuple(model),
            masks_from=p.masks_from,
            tlc=p.tlc,
            limit=p.limit,
            save_dir=p.save,
            ssim=p.ssim,
            device=p.device,
            precision=p.precision,
            tile=_tile(p.tile),
            tf32=p.tf32,
            mask_value=value,
            # --fast-masks is the old spelling of the default; --stock-masks departs from it.
            fast_masks=not p.stock_masks,
            offline=p.offline,
        )
        try:
            result = _run_with_progress(dataset, settings, enabled=not out.quiet)
        except NothingToDoError as exc:
            raise nothing_to_do(str(exc), json=out.json) from None
    _show(result, str(source), out)
    _write_reports(result, p.csv_path, p.json_path)
    if not result.complete:
        raise typer.Exit(EXIT_INPUT)


def _tile(text: str) -> int | Literal["auto"] | None:
    from sam_deblur_cli.pipeline import normalize_tile

    return normalize_tile(text)


def _show(result: EvalResult, title: str, out: OutputMode) -> None:
    """The table and notes on stdout (or the report as one JSON line); skips on stderr."""
    from sam_deblur_cli.evaluate import report_record

    if out.json:
        echo_json(report_record(result))
    else:
        console.print(_table(result, title=title))
        for line in _notes(result.summaries()):
            say(line, stdout=True)
    for issue in result.issues:
        who = f"{issue.name} ({issue.model})" if issue.model else issue.name
        say(f"{who}: {issue.reason}", label="skipped", style="yellow")


def _write_reports(result: EvalResult, csv_path: Path | None, json_path: Path | None) -> None:
    from sam_deblur_cli.evaluate import write_csv, write_json

    if csv_path is not None:
        write_csv(result, csv_path)
    if json_path is not None:
        write_json(result, json_path)


def _parse_mask_value(text: str | None) -> float | None:
    if text is None:
        return None
    from sam_deblur_cli.nets import parse_mask_value

    try:
        return parse_mask_value(text)
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not a mask value; use 1/255 or 1.", param_hint="--mask-value"
        ) from None


def _run_with_progress(dataset: Dataset, settings: EvalSettings, *, enabled: bool) -> EvalResult:
    """Evaluate with a transient progress bar on stderr (stdout stays for the table)."""
    from sam_deblur_cli.evaluate import evaluate

    with progress_bar(enabled=enabled) as bar:
        task = bar.add_task("evaluating", total=None)

        def advance(done: int, total: int, name: str) -> None:
            bar.update(task, completed=done, total=total, description=name)

        return evaluate(dataset, settings, progress=advance)


def _table(result: EvalResult, title: str) -> Table:
    """Rich table like the paper's: one row per model, PSNR (dB) / SSIM / MCR."""
    from rich.table import Table

    ssim = {"3d": "3-D SSIM (NAFNet's, as in the paper)", "classic": "classic per-channel SSIM"}
    masks = {"dataset": "the dataset's mask files", "sam": "SAM, once per image and recipe"}
    protocol = result.protocol
    papers = "the paper's protocol" if protocol.is_papers else "NOT the paper's protocol"
    parts = [
        f"{protocol.describe()} ({papers})",
        ssim[result.ssim],
        "MCR: share losing > 3 dB against the blurred input",
    ]
    if result.masks_from is not None:
        parts.insert(1, f"masks from {masks[result.masks_from]}")
    if result.mask_values:
        parts.insert(2, "Masks: the value MAP masks were fed at")
    caption = "; ".join(parts)
    table = Table(title=escape(title), caption=escape(caption))
    for header in ("Model", "TLC", "Masks", "PSNR", "SSIM", "MCR", "Images", "Skipped"):
        table.add_column(header, justify="left" if header == "Model" else "right")
    for s in result.summaries():
        table.add_row(
            cell(s.model),
            {True: "on", False: "off", None: "-"}[s.tlc],
            s.mask_value or "-",
            _number(s.psnr, "{:.2f}"),
            _number(s.ssim, "{:.3f}"),
            _number(s.mcr * 100.0, "{:.2f}%"),
            str(s.count),
            str(s.skipped),
        )
    return table


def _notes(summaries: list[ModelSummary]) -> list[str]:
    return [
        f"{s.model}: {s.identical} output(s) identical to the sharp image (infinite PSNR), "
        "left out of the PSNR mean."
        for s in summaries
        if s.identical
    ]


def _number(value: float, fmt: str) -> str:
    if math.isnan(value):
        return "-"
    return "inf" if math.isinf(value) else fmt.format(value)
