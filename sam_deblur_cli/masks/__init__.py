"""Segment Anything masks as the deblurring networks consume them.

With ``weights.models`` (which builds SAM), the only code that imports segment_anything.
Importing it stays light (no numpy, no torch): the pipeline and the CLI import it at
start-up; the work happens in sub-modules loaded on first use.

- :class:`MaskResult`: one image's masks as segmask + label map (what the networks take);
- :func:`result_from_maskset`: encode generated masks the upstream way;
- :func:`load_mask_file`: a segmask PNG or upstream groups ``.npz`` made elsewhere;
- :class:`MaskGenerator`: SAM loaded once per run, with the mask cache in front of it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from sam_deblur_cli.masks.maskset import ListMaskSet, MaskRecord, MaskSet
from sam_deblur_cli.masks.result import (
    MaskResult,
    check_guide,
    result_from_maskset,
    result_from_segmask,
)

if TYPE_CHECKING:
    import numpy as np

    from sam_deblur_cli.masks.cache import MaskCache
    from sam_deblur_cli.masks.sam import MaskSetGenerator, RecipeLike
    from sam_deblur_cli.weights import Manifest

__all__ = [
    "ListMaskSet",
    "MaskGenerator",
    "MaskRecord",
    "MaskResult",
    "MaskSet",
    "check_guide",
    "load_mask_file",
    "result_from_maskset",
    "result_from_segmask",
]

logger = logging.getLogger(__name__)


def load_mask_file(path: str | Path, shape: tuple[int, int]) -> MaskResult:
    """Read a segmask PNG or an upstream groups ``.npz`` for an image of ``shape`` (H, W)."""
    from sam_deblur_cli.masks.formats import load_mask_file as _load

    return _load(path, shape)


class MaskGenerator:
    """SAM for one run: loaded on the first cache miss, then reused for every image.

    ``recipe`` is the recipe to follow (overrides already applied, see
    ``sam.override_recipe``): its ``channel_order`` and ``amg`` parameters; the SAM entry
    is ``sam_entry_name``. ``device`` is a torch device string (``devices.resolve_device``).
    ``sam_precision``: SAM's image encoder in fp32 (published), fp32-sdpa (fused attention),
    bf16 or fp16 (CUDA only; ``masks.precision``: a UsageError here otherwise).
    """

    def __init__(
        self,
        sam_entry_name: str,
        recipe: RecipeLike,
        *,
        manifest: Manifest,
        device: str = "cpu",
        fast: bool = True,
        offline: bool = False,
        cache: bool = True,
        sam_precision: str = "fp32",
    ) -> None:
        from sam_deblur_cli.masks.precision import check_sam_precision

        check_sam_precision(sam_precision, device)
        self.sam_precision = sam_precision
        self.entry = manifest.get(sam_entry_name)
        self.recipe = recipe
        self.device = device
        self.fast = fast
        self.offline = offline
        self.cache: MaskCache | None = None
        if cache:
            from sam_deblur_cli.masks.cache import MaskCache

            self.cache = MaskCache()
        self._generator: MaskSetGenerator | None = None
        self.sam_runs = 0  # images SAM actually ran on (cache misses)

    def __call__(self, rgb_uint8: np.ndarray, *, need_maskset: bool = False) -> MaskResult:
        """Masks for an RGB uint8 H x W x 3 image (the recipe's channel order is applied here).

        ``need_maskset=True`` (per-mask outputs) skips the cache lookup, since the cache keeps
        only the segmask; the result is still stored for later runs.
        """
        if self.cache is None:
            return result_from_maskset(self._generate(rgb_uint8))
        key = self._cache_key(rgb_uint8)
        hit = None if need_maskset else self.cache.get(key, rgb_uint8.shape[:2])
        if hit is not None:
            return hit
        result = result_from_maskset(self._generate(rgb_uint8))
        assert result.segmask is not None  # generated masks always have one
        self.cache.put(key, result.segmask, result.count)
        return result

    def _generate(self, rgb_uint8: np.ndarray) -> MaskSet:
        from sam_deblur_cli.masks import sam

        if self._generator is None:
            from sam_deblur_cli.masks.precision import apply_sam_precision

            model = sam.load_sam(self.entry, device=self.device, offline=self.offline)
            apply_sam_precision(model, self.sam_precision)
            self._generator = sam.make_generator(model, self.recipe.amg, fast=self.fast)
        self.sam_runs += 1
        return self._generator(sam.to_sam_input(rgb_uint8, self.recipe.channel_order))

    def _cache_key(self, rgb_uint8: np.ndarray) -> str:
        from sam_deblur_cli.masks.cache import cache_key
        from sam_deblur_cli.masks.sam import entry_sha256

        return cache_key(
            rgb_uint8,
            sam_name=self.entry.name,
            sam_sha256=entry_sha256(self.entry, offline=self.offline),
            channel_order=self.recipe.channel_order,
            amg=dict(self.recipe.amg),
            generator="fast" if self.fast else "stock",
            sam_precision=self.sam_precision,
        )
