"""Small paired datasets for the training tests: real photos with a known motion blur.

Two crops of scikit-image photos, blurred with a 5-pixel horizontal box kernel, and a
segmask derived from the sharp image's content (luminance bands), so any misalignment of
masks against images is visible.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from tiny_models import small_photo

from sam_deblur_cli.masks.formats import write_segmask_png
from sam_deblur_cli.nets import NetConfig
from sam_deblur_cli.train.config import TrainConfig

SIZE = 96
KERNEL = np.zeros((5, 5), np.float32)
KERNEL[2, :] = 1 / 5  # horizontal motion over 5 pixels


def motion_blur(rgb: np.ndarray) -> np.ndarray:
    """``rgb`` (uint8 H x W x 3) convolved with ``KERNEL``, reflected borders, uint8."""
    planes = [
        ndimage.convolve(rgb[..., c].astype(np.float32), KERNEL, mode="reflect") for c in range(3)
    ]
    return np.clip(np.rint(np.stack(planes, -1)), 0, 255).astype(np.uint8)


def content_segmask(rgb: np.ndarray) -> np.ndarray:
    """A segmask (uint8 gray values) that is a pure function of the pixels: luminance bands."""
    return ((rgb.mean(-1) // 64) * 60).astype(np.uint8)


def write_pairs(root: Path, *, masks: bool = True) -> Path:
    """``root`` in the upstream layout: input/, target/ and input_mask/ with pairs a and b."""
    for folder in ("input", "target", "input_mask"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for name, step in (("a", 4), ("b", 5)):
        sharp = np.ascontiguousarray(small_photo("astronaut", step)[:SIZE, :SIZE])
        Image.fromarray(sharp).save(root / "target" / f"{name}.png")
        Image.fromarray(motion_blur(sharp)).save(root / "input" / f"{name}.png")
        if masks:
            write_segmask_png(root / "input_mask" / f"{name}.png", content_segmask(sharp))
    return root


def tiny_config(data: Path, run_dir: Path, variant: str = "map", **changes: object) -> TrainConfig:
    """A width-8, two-level network on 32 x 32 crops, batch 4, no worker processes."""
    cfg = TrainConfig(
        data=str(data),
        run_dir=str(run_dir),
        net=NetConfig(variant=variant, width=8, enc_blk_nums=(1, 1), dec_blk_nums=(1, 1)),  # type: ignore[arg-type]
        steps=10,
        batch=4,
        crop=32,
        lr=5e-3,
        save_every=1000,
        val_every=1000,
        log_every=5,
        workers=0,
    )
    return replace(cfg, **changes)  # type: ignore[arg-type]
