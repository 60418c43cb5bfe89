"""What describes a network, as plain data (no torch): variants, guide kinds, mask values,
:class:`NetConfig`. The package re-exports every name; modules inside ``nets`` import them
from here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Variant = Literal["plain", "cat", "map"]
VARIANTS: tuple[Variant, ...] = ("plain", "cat", "map")

# What a network's forward() takes as its guide (``net.guide_kind``), by variant.
GuideKind = Literal["none", "segmask", "labels"]
GUIDE_KINDS: dict[str, GuideKind] = {"plain": "none", "cat": "segmask", "map": "labels"}

# The value of a mask pixel as upstream's grouped-mask loader fed the MAP unit: its boolean
# slices divided by 255, in float32 (upstream.md section 4). The published checkpoints
# learned on masks of this value; a checkpoint trained with value-1 masks needs 1.0.
MASK_VALUE_UPSTREAM = 0.0039215688593685627  # float32(1 / 255)
_MASK_VALUE_NAMES = {"1/255": MASK_VALUE_UPSTREAM, "1": 1.0}


def parse_mask_value(value: object) -> float:
    """``"1/255"``, ``"1"`` or a number in (0, 1] -> the float the MAP unit uses.

    Raises ValueError for anything else. Numbers within 1e-9 of 1/255 snap to float32(1/255).
    """
    if isinstance(value, str):
        if value.strip() in _MASK_VALUE_NAMES:
            return _MASK_VALUE_NAMES[value.strip()]
        raise ValueError(f"unknown mask value {value!r}; use 1/255 or 1")
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise ValueError(f"mask value {value!r} must be 1/255, 1 or a number in (0, 1]")
    return MASK_VALUE_UPSTREAM if abs(value - 1 / 255) < 1e-9 else float(value)


def format_mask_value(value: float) -> str:
    """The name a mask value is shown under: ``"1/255"``, ``"1"`` or the number."""
    names = {v: k for k, v in _MASK_VALUE_NAMES.items()}
    return names.get(value, f"{value:g}")


@dataclass(frozen=True)
class NetConfig:
    """Architecture arguments of one network; the published checkpoints use the defaults."""

    variant: Variant = "map"
    width: int = 32
    enc_blk_nums: tuple[int, ...] = (1, 1, 1, 28)
    middle_blk_num: int = 1
    dec_blk_nums: tuple[int, ...] = (1, 1, 1, 1)
    img_channel: int = 3
    seg_channel: int = 2  # map only
    mask_value: float = MASK_VALUE_UPSTREAM  # map only: see MASK_VALUE_UPSTREAM
