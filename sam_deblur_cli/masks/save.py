"""Masks for photos, made the way a model's training masks were, saved in mask files.

What ``sam-deblur masks`` does, without the printing. For an image named ``STEM.ext`` and
an output folder ``DIR``:

    DIR/STEM_segmask.png   segmask: 8-bit gray, the upstream encoding     ("segmask")
    DIR/STEM_groups.npz    groups: key "masks", bool G x 1 x H x W          ("npz")
    DIR/STEM_overlay.png   the photo, one colour per group, white edges     ("overlay")
    DIR/STEM/              0.png, 1.png... + metadata.csv, as segment-anything's
                           scripts/amg.py writes them                      ("png")
    DIR/STEM_masks.json    COCO RLE list, as amg.py --convert-to-rle does   ("coco")

Importing it stays light (no numpy, no torch): the CLI reads the format names at start-up.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sam_deblur_cli.amg import RecipeOverrides
from sam_deblur_cli.errors import UsageError

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
# Formats that need the individual masks, which the cache does not keep: SAM always runs.
NEEDS_MASKSET = frozenset({"png", "coco"})


@dataclass(frozen=True)
class MaskSettings:
    """Which masks to make: a model's recipe with overrides, where SAM runs, the cache."""

    recipe: RecipeOverrides = field(default_factory=RecipeOverrides)  # model + departures
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    offline: bool = False
    cache: bool = True  # read and write the mask cache


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


def output_stems(images: Sequence[Path], output: Path, formats: Sequence[str]) -> list[str]:
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


def open_generator(settings: MaskSettings) -> tuple[MaskGenerator, list[str]]:
    """The generator for the model's recipe with the overrides, and the departure notes.

    Raises UsageError for a model without a mask recipe or a bad override, and the weights'
    errors when SAM is not available.
    """
    from sam_deblur_cli.devices import resolve_device
    from sam_deblur_cli.masks import MaskGenerator
    from sam_deblur_cli.masks.precision import precision_departures
    from sam_deblur_cli.masks.sam import override_recipe, recipe_departures
    from sam_deblur_cli.weights import load_manifest

    s = settings.recipe
    manifest = load_manifest()
    trained = manifest.get(s.model).recipe
    if trained is None:
        raise UsageError(
            f"{s.model} takes no masks, so it has no mask recipe; pass a SAM-Deblur model "
            "with --model (e.g. segnafnet-gopro)."
        )
    recipe = override_recipe(trained, sam=s.sam, channel_order=s.channel_order, amg=s.amg)
    resolved, _ = resolve_device(settings.device)
    generator = MaskGenerator(
        recipe.sam,
        recipe,
        manifest=manifest,
        device=resolved,
        fast=s.fast_masks,
        offline=settings.offline,
        cache=settings.cache,
        sam_precision=s.sam_precision,
    )
    notes = recipe_departures(trained, recipe, model=s.model)
    return generator, notes + precision_departures(s.sam_precision, model=s.model)


def make_folder(output: Path) -> None:
    """Create the output folder (UsageError, saying so, when it cannot be) and remove the
    temporary files a killed run left there."""
    from sam_deblur_cli.files import remove_stale_temporaries

    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(
            f"Could not create {output} ({exc.strerror}); pick another -o folder."
        ) from exc
    remove_stale_temporaries(output)


def save_masks(
    image: Path, base: Path, formats: Sequence[str], generator: MaskGenerator
) -> dict[str, Any]:
    """Masks of one photo written as ``base`` + each format's suffix; returns its record.

    The record (JSON-able): input, status "ok", masks, groups, cached, outputs (format ->
    path), seconds. Raises InputError subclasses for this photo's problems.
    """
    from sam_deblur_cli.imageio import read_image, to_uint8

    start = time.perf_counter()
    rgb = to_uint8(read_image(image).rgb)
    result = generator(rgb, need_maskset=bool(NEEDS_MASKSET & set(formats)))
    outputs = {name: str(write_format(name, base, rgb, result)) for name in formats}
    return {
        "input": str(image),
        "status": "ok",
        "masks": result.count,
        "groups": result.groups,
        "cached": result.maskset is None,
        "outputs": outputs,
        "seconds": round(time.perf_counter() - start, 3),
    }


def write_format(name: str, base: Path, rgb: np.ndarray, result: MaskResult) -> Path:
    """Write ``result`` in format ``name`` beside ``base``; ``rgb``: the photo, H x W x 3 uint8."""
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
