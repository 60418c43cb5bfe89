"""`sam-deblur eval`: the paper's table (PSNR / SSIM / MCR) on a paired dataset.

Thin: parses options, shows progress on stderr and the table on stdout, writes the
CSV/JSON reports and picks the exit code (0 all evaluated, 1 some skipped, 2 set-up).
The work happens in ``sam_deblur_cli.evaluate``, imported inside the command.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import typer

from sam_deblur_cli.cli.app import app, console, err_console
from sam_deblur_cli.errors import EXIT_INPUT

if TYPE_CHECKING:
    from rich.table import Table

    from sam_deblur_cli.evaluate import Dataset, EvalResult, EvalSettings, ModelSummary


@app.command("eval")
def eval_command(
    source: Path = typer.Argument(
        ...,
        help="Dataset root in the upstream layout (input/, target/, optional input_mask/, "
        "grouped_masks/; or test/ holding them), or a folder of blurred images.",
        show_default=False,
    ),
    sharp: Path | None = typer.Argument(
        None,
        help="Folder of sharp images, when SOURCE is a folder of blurred ones.",
        show_default=False,
    ),
    model: list[str] = typer.Option(
        ["segnafnet-gopro"], "--model", "-m", help="Model to evaluate; repeat for several."
    ),
    masks_from: Literal["auto", "dataset", "sam"] = typer.Option(
        "auto",
        "--masks-from",
        help="Masks for SAM-guided models: the dataset's mask files, or SAM run once per "
        "image and recipe. auto: the dataset's when it has a mask folder.",
    ),
    tlc: bool | None = typer.Option(
        None, "--tlc/--no-tlc", help="Test-time local converter; default: each model's own."
    ),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Only the first N pairs."),
    save: Path | None = typer.Option(
        None, "--save", help="Save restored images as DIR/MODEL/NAME.png.", show_default=False
    ),
    csv_path: Path | None = typer.Option(
        None, "--csv", help="Write per-image rows to this CSV file.", show_default=False
    ),
    json_path: Path | None = typer.Option(
        None,
        "--json",
        help="Write summaries, per-image rows and issues as JSON.",
        show_default=False,
    ),
    ssim: Literal["3d", "classic"] = typer.Option(
        "3d", "--ssim", help="3d: NAFNet's SSIM as in the paper; classic: per-channel 11x11."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    precision: Literal["auto", "fp32", "fp16", "bf16"] = typer.Option(
        "fp32", "--precision", help="Network precision; fp32 is the paper's protocol."
    ),
    tile: str = typer.Option(
        "0",
        "--tile",
        help="0: whole images, as the paper (an image that does not fit is skipped); "
        "auto: tile only when needed; or a tile size in pixels.",
    ),
    tf32: bool = typer.Option(
        False,
        "--tf32/--no-tf32",
        help="Allow TF32 in fp32 convolutions on CUDA GPUs (faster, not the paper's protocol).",
    ),
    mask_value: str | None = typer.Option(
        None,
        "--mask-value",
        help="Feed MAP models masks of this value instead of their entry's: 1/255 (as "
        "upstream's loader) or 1. To check which convention a checkpoint learned.",
        show_default=False,
    ),
    fast_masks: bool = typer.Option(
        True, "--fast-masks/--stock-masks", help="Fast or stock SAM mask generator."
    ),
    offline: bool = typer.Option(False, "--offline", help="Never download weights."),
) -> None:
    """Measure models on blurred/sharp pairs: PSNR, SSIM and mode-collapse rate."""
    from sam_deblur_cli.evaluate import (
        EvalSettings,
        check_writable,
        open_dataset,
        write_csv,
        write_json,
    )
    from sam_deblur_cli.pipeline import normalize_tile

    value = _parse_mask_value(mask_value)
    dataset = open_dataset(source, sharp)
    for report in (csv_path, json_path):
        if report is not None:
            check_writable(report)
    settings = EvalSettings(
        models=tuple(model),
        masks_from=masks_from,
        tlc=tlc,
        limit=limit,
        save_dir=save,
        ssim=ssim,
        device=device,
        precision=precision,
        tile=normalize_tile(tile),
        tf32=tf32,
        mask_value=value,
        fast_masks=fast_masks,
        offline=offline,
    )
    result = _run_with_progress(dataset, settings)
    console.print(_table(result, title=str(source)))
    for note in _notes(result.summaries()):
        console.print(note, highlight=False)
    for issue in result.issues:
        who = f"{issue.name} ({issue.model})" if issue.model else issue.name
        err_console.print(f"[yellow]skipped[/] {who}: {issue.reason}", highlight=False)
    if csv_path is not None:
        write_csv(result, csv_path)
    if json_path is not None:
        write_json(result, json_path)
    if not result.complete:
        raise typer.Exit(EXIT_INPUT)


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


def _run_with_progress(dataset: Dataset, settings: EvalSettings) -> EvalResult:
    """Evaluate with a transient progress bar on stderr (stdout stays for the table)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from sam_deblur_cli.evaluate import evaluate

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console, transient=True) as bar:
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
    table = Table(title=title, caption=caption)
    for header in ("Model", "TLC", "Masks", "PSNR", "SSIM", "MCR", "Images", "Skipped"):
        table.add_column(header, justify="left" if header == "Model" else "right")
    for s in result.summaries():
        table.add_row(
            s.model,
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
