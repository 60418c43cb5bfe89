"""The automatic mask generator's parameters: the one table every layer derives from.

:class:`AmgParams` names each keyword argument of segment_anything's
``SamAutomaticMaskGenerator`` that a recipe may set, with its type and its stock default
(what upstream.md 5.1 says upstream used). The manifest's allowed ``amg`` keys
(``AMG_KEYS``), the defaults a recipe falls back to (``AMG_DEFAULTS``), the fast
generator's settings and the mask cache key all come from it; tests compare it with
segment_anything's own signature so that drift shows. :class:`RecipeOverrides` is the one
type for "this model's mask recipe, with these departures" that deblurring
(``pipeline.DeblurSettings``) and mask making (``masks.save.MaskSettings``) both hold.

Light on purpose: ``weights`` imports it to check manifests (no numpy, torch or
segment_anything here).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sam_deblur_cli.errors import UsageError

__all__ = [
    "AMG_DEFAULTS",
    "AMG_KEYS",
    "AmgParams",
    "RecipeOverrides",
    "amg_params",
    "effective_amg",
]


@dataclass(frozen=True)
class AmgParams:
    """``SamAutomaticMaskGenerator``'s recipe parameters, at its defaults.

    ``points_per_side`` is None only beside explicit ``point_grids`` (which no recipe sets).
    """

    points_per_side: int | None = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 0

    def as_kwargs(self) -> dict[str, Any]:
        """The parameters as ``SamAutomaticMaskGenerator`` keyword arguments (table order)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


# What a recipe that leaves a parameter out gets; keys in table order.
AMG_DEFAULTS: Mapping[str, float | int] = AmgParams().as_kwargs()
AMG_KEYS = frozenset(AMG_DEFAULTS)


def effective_amg(amg: Mapping[str, float | int]) -> dict[str, float | int]:
    """All generator parameters: the recipe's values over segment-anything's defaults.

    Values are kept as given (an int stays an int): the mask cache key is made from this.
    """
    unknown = sorted(set(amg) - AMG_KEYS)
    if unknown:
        raise UsageError(
            f"Unknown mask generator parameter(s) {', '.join(unknown)}; use "
            f"{', '.join(AMG_DEFAULTS)}."
        )
    return {**AMG_DEFAULTS, **amg}


def amg_params(amg: Mapping[str, float | int]) -> AmgParams:
    """The recipe's values over the defaults, as :class:`AmgParams` (unknown names rejected)."""
    values: dict[str, Any] = effective_amg(amg)
    return AmgParams(**values)


@dataclass(frozen=True)
class RecipeOverrides:
    """The deblur model whose mask recipe (``weights.toml``) to follow, and how this run
    departs from it; the defaults follow the published model's recipe exactly."""

    model: str = "segnafnet-gopro"
    sam: str | None = None  # another SAM entry than the recipe's (a departure)
    amg: dict[str, float | int] = field(default_factory=dict)  # generator parameter overrides
    channel_order: str | None = None  # "bgr" / "rgb" instead of the recipe's
    fast_masks: bool = True  # False: segment-anything's stock generator
    sam_precision: str = "fp32"  # SAM's image encoder: fp32 | fp32-sdpa | bf16 | fp16
