"""`sam-deblur masks IMAGE... -o DIR`: SAM masks made the way a model's training masks were.

Thin: options -> ``MaskSettings``, then ``sam_deblur_cli.masks.save`` plans the file names,
sets up the generator and writes each photo's files (formats listed there). Two inputs with
the same STEM are refused before any work. Masks are cached by image content, SAM weights
and recipe, so running a photo again skips SAM (png and coco need the individual masks, so
they always run it).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from sam_deblur_cli.cli.app import app
from sam_deblur_cli.cli.options import (
    FORMAT,
    OUTPUT,
    Device,
    MaskEvery,
    MaskRecipeOptions,
    Offline,
    OutputMode,
    SceneCut,
    takes_groups,
)
from sam_deblur_cli.cli.output import (
    echo_json,
    fail,
    library_logging,
    note,
    say,
)
from sam_deblur_cli.errors import EXIT_INPUT, EXIT_OK, InputError, SamDeblurError
from sam_deblur_cli.masks.save import DEFAULT_FORMATS, FORMATS

if TYPE_CHECKING:
    from sam_deblur_cli.masks import MaskGenerator

MASKS_HELP = (
    "Make SAM masks the way the model's training masks were made, and save them.\n\n"
    "For each IMAGE named STEM.ext the -o folder gets STEM_segmask.png (8-bit gray segmask), "
    "STEM_groups.npz (upstream groups) and STEM_overlay.png (a preview); --format png adds "
    "STEM/ (one PNG per mask + metadata.csv), --format coco STEM_masks.json (COCO RLE).\n\n"
    "For a video (mp4, mov, mkv, webm, avi) the -o folder gets STEM/ with frame_NNNNNN.png "
    "(the segmask of each key frame, see --mask-every) and frames.csv mapping every frame "
    "and its timestamp to the segmask it uses.\n\n"
    "Inputs sharing a STEM are refused. Masks are cached by image content and recipe, so a "
    "second run skips SAM (--no-cache to bypass)."
)


@app.command("masks", help=MASKS_HELP)
@takes_groups
def masks_command(
    images: Annotated[list[Path], typer.Argument(help="Photos or videos to make masks for.")],
    *,
    output: Annotated[Path, typer.Option(*OUTPUT, help="Folder for the mask files.")],
    format: Annotated[
        str,
        typer.Option(*FORMAT, help=f"Comma-separated: {', '.join(FORMATS)}, or all."),
    ] = DEFAULT_FORMATS,
    recipe: MaskRecipeOptions,
    device: Device = "auto",
    offline: Offline = False,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Neither read nor write the mask cache.")
    ] = False,
    mask_every: MaskEvery = 1,
    scene_cut: SceneCut = 0.12,
    out: OutputMode,
) -> None:
    """Make SAM masks the way the model's training masks were made, and save them."""
    from sam_deblur_cli.masks import save

    settings = save.MaskSettings(
        recipe=recipe.overrides(), device=device, offline=offline, cache=not no_cache
    )
    try:
        with library_logging(verbose=out.verbose, quiet=out.quiet):
            formats = save.parse_formats(format)
            stems = save.output_stems(images, output, formats)
            generator, notes = save.open_generator(settings)
            save.make_folder(output)
            if notes and not out.quiet:
                note(" ".join(notes))
            failed = sum(
                not _one(image, output / stem, formats, generator, out, (mask_every, scene_cut))
                for image, stem in zip(images, stems, strict=True)
            )
    except SamDeblurError as exc:  # set-up errors: every input failed the same way
        raise fail(str(exc), exc.exit_code) from None
    raise typer.Exit(EXIT_INPUT if failed else EXIT_OK)


def _one(
    image: Path,
    base: Path,
    formats: list[str],
    generator: MaskGenerator,
    out: OutputMode,
    keys: tuple[int, float],
) -> bool:
    """One photo or video, its failure reported in one line; returns whether it worked."""
    from sam_deblur_cli.masks.save import save_masks
    from sam_deblur_cli.video import is_video_path

    try:
        if is_video_path(image):
            from sam_deblur_cli.video.engine import video_masks

            every, cut = keys
            record = video_masks(generator, image, base, mask_every=every, scene_cut=cut or None)
        else:
            record = save_masks(image, base, formats, generator)
    except InputError as exc:
        record = {"input": str(image), "status": "failed", "error": str(exc)}
        say(f"{image}: {exc}", label="error:", style="bold red")
    _report(record, out)
    return record["status"] == "ok"


def _report(record: dict[str, Any], out: OutputMode) -> None:
    if out.json:
        echo_json(record)
    elif record["status"] == "ok" and "key_frames" in record:
        say(
            f"{record['input']}: {record['frames']} frames, {record['key_frames']} key frames"
            f" -> {record['output']}",
            stdout=True,
        )
    elif record["status"] == "ok":
        cached = " (cached)" if record["cached"] else ""
        say(
            f"{record['input']}: {record['masks']} masks, {record['groups']} groups{cached} -> "
            + ", ".join(record["outputs"].values()),
            stdout=True,
        )
