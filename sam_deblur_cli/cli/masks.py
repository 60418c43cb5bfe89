"""`sam-deblur masks IMAGE... -o DIR`: SAM masks made the way a model's training masks were.

Outputs per image, STEM being the image's file name without its extension:

    DIR/STEM_segmask.png   segmask: 8-bit gray, the upstream encoding     (--format segmask)
    DIR/STEM_groups.npz    groups: key "masks", bool G x 1 x H x W          (--format npz)
    DIR/STEM_overlay.png   the photo, one colour per group, white edges     (--format overlay)
    DIR/STEM/              0.png, 1.png... + metadata.csv, as segment-anything's
                           scripts/amg.py writes them                      (--format png)
    DIR/STEM_masks.json    COCO RLE list, as amg.py --convert-to-rle does   (--format coco)

The default is segmask,npz,overlay. Two inputs with the same STEM are refused before any
work. Masks are cached by image content, SAM weights and recipe, so running a photo again
skips SAM (png and coco need the individual masks, so they always run it).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from sam_deblur_cli.cli.app import app, console, echo_json, err_console, fail
from sam_deblur_cli.errors import EXIT_INPUT, EXIT_OK, InputError, SamDeblurError, UsageError

if TYPE_CHECKING:
    import numpy as np

    from sam_deblur_cli.masks import MaskGenerator, MaskResult

FORMATS = ("segmask", "npz", "overlay", "png", "coco")
DEFAULT_FORMATS = "segmask,npz,overlay"
SUFFIXES = {
    "segmask": "_segmask.png",
    "npz": "_groups.npz",
    "overlay": "_overlay.png",
    "png": "",
    "coco": "_masks.json",
}
AMG_PANEL = "Mask generator overrides (departures from the model's recipe)"


MASKS_HELP = (
    "Make SAM masks the way the model's training masks were made, and save them.\n\n"
    "For each IMAGE named STEM.ext the -o folder gets STEM_segmask.png (8-bit gray segmask), "
    "STEM_groups.npz (upstream groups) and STEM_overlay.png (a preview); --format png adds "
    "STEM/ (one PNG per mask + metadata.csv), --format coco STEM_masks.json (COCO RLE).\n\n"
    "Inputs sharing a STEM are refused. Masks are cached by image content and recipe, so a "
    "second run skips SAM (--no-cache to bypass)."
)


@app.command("masks", help=MASKS_HELP)
def masks_command(
    images: Annotated[list[Path], typer.Argument(help="Photos to make masks for.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the mask files.")],
    format: Annotated[
        str,
        typer.Option("--format", "-f", help=f"Comma-separated: {', '.join(FORMATS)}, or all."),
    ] = DEFAULT_FORMATS,
    model: Annotated[
        str, typer.Option("--model", "-m", help="Deblur model whose mask recipe to follow.")
    ] = "segnafnet-gopro",
    sam: Annotated[
        str | None, typer.Option("--sam", help="SAM entry to use instead of the recipe's.")
    ] = None,
    points_per_side: Annotated[
        int | None, typer.Option(help="Grid of prompt points per side.", rich_help_panel=AMG_PANEL)
    ] = None,
    pred_iou_thresh: Annotated[
        float | None, typer.Option(help="Predicted-IoU cut-off.", rich_help_panel=AMG_PANEL)
    ] = None,
    stability_score_thresh: Annotated[
        float | None, typer.Option(help="Stability-score cut-off.", rich_help_panel=AMG_PANEL)
    ] = None,
    channel_order: Annotated[
        str | None,
        typer.Option(help="bgr or rgb: the order SAM is fed.", rich_help_panel=AMG_PANEL),
    ] = None,
    stock: Annotated[
        bool, typer.Option("--stock", help="Use segment-anything's stock generator (slower).")
    ] = False,
    device: Annotated[
        str, typer.Option("--device", "-d", help="auto, cpu, cuda, cuda:N or mps.")
    ] = "auto",
    offline: Annotated[bool, typer.Option("--offline", help="Never download weights.")] = False,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Neither read nor write the mask cache.")
    ] = False,
    json: Annotated[bool, typer.Option("--json", help="One JSON record per image.")] = False,
) -> None:
    """Make SAM masks the way the model's training masks were made, and save them."""
    amg = {
        key: value
        for key, value in (
            ("points_per_side", points_per_side),
            ("pred_iou_thresh", pred_iou_thresh),
            ("stability_score_thresh", stability_score_thresh),
        )
        if value is not None
    }
    try:
        formats = parse_formats(format)
        stems = output_stems(images, output, formats)
        generator, notes = _generator(
            model,
            sam,
            channel_order,
            amg,
            fast=not stock,
            device=device,
            offline=offline,
            cache=not no_cache,
        )
        _make_folder(output)
        if notes:
            err_console.print(
                "[yellow]note:[/] " + " ".join(notes), highlight=False, soft_wrap=True
            )
        failed = sum(
            not _process(image, output / stem, formats, generator, json=json)
            for image, stem in zip(images, stems, strict=True)
        )
    except SamDeblurError as exc:  # set-up errors: every input failed the same way
        raise fail(str(exc), exc.exit_code) from None
    raise typer.Exit(EXIT_INPUT if failed else EXIT_OK)


def parse_formats(text: str) -> list[str]:
    """``"segmask,npz"`` -> ``["segmask", "npz"]``; ``"all"`` -> every format."""
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    if names == ["all"]:
        return list(FORMATS)
    unknown = [name for name in names if name not in FORMATS]
    if unknown or not names:
        raise UsageError(
            f"Unknown mask format {', '.join(unknown) or repr(text)}; use a comma-separated "
            f"list of {', '.join(FORMATS)}, or all."
        )
    return list(dict.fromkeys(names))


def output_stems(images: list[Path], output: Path, formats: list[str]) -> list[str]:
    """The STEM of each input; refuses two inputs sharing one, or an output over an input."""
    seen: dict[str, Path] = {}
    for image in images:
        if image.stem in seen:
            raise UsageError(
                f"{seen[image.stem]} and {image} would both write {image.stem}_*; give them "
                "different names or run them with different -o folders."
            )
        seen[image.stem] = image
    inputs = {image.resolve() for image in images}
    for stem in seen:
        for name in formats:
            target = (output / f"{stem}{SUFFIXES[name]}").resolve()
            if target in inputs:
                raise UsageError(f"{target} is an input; pick another -o folder.")
    return list(seen)


def _generator(
    model: str,
    sam: str | None,
    channel_order: str | None,
    amg: dict[str, float | int],
    *,
    fast: bool,
    device: str,
    offline: bool,
    cache: bool,
) -> tuple[MaskGenerator, list[str]]:
    """The mask generator for the model's recipe with overrides, and the departure notes."""
    from sam_deblur_cli.devices import resolve_device
    from sam_deblur_cli.masks import MaskGenerator
    from sam_deblur_cli.masks.sam import override_recipe, recipe_departures
    from sam_deblur_cli.weights import load_manifest

    manifest = load_manifest()
    trained = manifest.get(model).recipe
    if trained is None:
        raise UsageError(
            f"{model} takes no masks, so it has no mask recipe; pass a SAM-Deblur model "
            "with --model (e.g. segnafnet-gopro)."
        )
    recipe = override_recipe(trained, sam=sam, channel_order=channel_order, amg=amg)
    resolved, _ = resolve_device(device)
    generator = MaskGenerator(
        recipe.sam,
        recipe,
        manifest=manifest,
        device=resolved,
        fast=fast,
        offline=offline,
        cache=cache,
    )
    return generator, recipe_departures(trained, recipe, model=model)


def _make_folder(output: Path) -> None:
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(
            f"Could not create {output} ({exc.strerror}); pick another -o folder."
        ) from exc


def _process(
    image: Path, base: Path, formats: list[str], generator: MaskGenerator, *, json: bool
) -> bool:
    """One photo, its failure reported in one line; returns whether it worked."""
    try:
        record = _one(image, base, formats, generator)
    except InputError as exc:
        record = {"input": str(image), "status": "failed", "error": str(exc)}
        err_console.print(f"[bold red]error:[/] {image}: {exc}", highlight=False, soft_wrap=True)
    _report(record, json=json)
    return record["status"] == "ok"


def _one(image: Path, base: Path, formats: list[str], generator: MaskGenerator) -> dict[str, Any]:
    """Masks of one photo written in every asked format; returns its JSON record."""
    from sam_deblur_cli.imageio import read_image, to_uint8

    start = time.perf_counter()
    rgb = to_uint8(read_image(image).rgb)
    result = generator(rgb, need_maskset=bool({"png", "coco"} & set(formats)))
    outputs = {name: str(_write(name, base, rgb, result)) for name in formats}
    return {
        "input": str(image),
        "status": "ok",
        "masks": result.count,
        "groups": result.groups,
        "cached": result.maskset is None,
        "outputs": outputs,
        "seconds": round(time.perf_counter() - start, 3),
    }


def _write(name: str, base: Path, rgb: np.ndarray, result: MaskResult) -> Path:
    from sam_deblur_cli.masks import formats as f

    path = base.with_name(base.name + SUFFIXES[name])
    if name == "segmask":
        assert result.segmask is not None  # generated or cached masks always have one
        return f.write_segmask_png(path, result.segmask)
    if name == "npz":
        return f.write_groups_npz(path, result.labels)
    if name == "overlay":
        return f.write_overlay_png(path, rgb, result)
    assert result.maskset is not None  # asked for with need_maskset
    if name == "png":
        return f.write_mask_folder(path, result.maskset)
    return f.write_coco_json(path, result.maskset)


def _report(record: dict[str, Any], *, json: bool) -> None:
    if json:
        echo_json(record)
    elif record["status"] == "ok":
        cached = " (cached)" if record["cached"] else ""
        console.print(
            f"{record['input']}: {record['masks']} masks, {record['groups']} groups{cached} -> "
            + ", ".join(record["outputs"].values()),
            highlight=False,
            soft_wrap=True,
        )
