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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from sam_deblur_cli.errors import MaskError, UsageError
from sam_deblur_cli.masks.maskset import ListMaskSet, MaskRecord, MaskSet

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
]

GuideKind = Literal["none", "segmask", "labels"]

logger = logging.getLogger(__name__)


@dataclass
class MaskResult:
    """One image's masks in the forms the networks and the mask files use.

    ``segmask``: uint8 H x W, upstream encoding (upstream.md 5.3); None when the masks came
    from a groups ``.npz``, whose gray values are lost. ``labels``: int64 H x W, groups
    0..G-1 by increasing gray value, -1 where no group covers a pixel (npz only).
    ``count``: SAM masks that made it (0 when read from a file). ``maskset``: the
    individual masks, only when they were generated in this run (not from cache or file).
    """

    segmask: np.ndarray | None
    labels: np.ndarray
    groups: int
    count: int
    maskset: MaskSet | None = None

    @property
    def shape(self) -> tuple[int, int]:
        height, width = self.labels.shape
        return int(height), int(width)

    def guide(self, kind: GuideKind) -> np.ndarray | None:
        """The guide a network with ``guide_kind == kind`` takes (docs/DESIGN.md, nets)."""
        if kind == "none":
            return None
        if kind == "labels":
            return self.labels
        if self.segmask is None:
            raise MaskError(
                "This model takes the segmask's gray values, which a groups .npz does not "
                "keep; pass a segmask PNG instead."
            )
        return self.segmask


def check_guide(kind: GuideKind, guide: np.ndarray | None, shape: tuple[int, ...]) -> None:
    """The one check of a network's mask guide against its image of ``shape`` (H, W, ...).

    A bad mask (wrong size, a segmask that is not uint8, a label map that is not integers
    from -1 up or has no group at all) is that input's problem: MaskError, exit 1, a batch
    goes on. Masks for a model without a MAP or CAT input, or none for one that needs them,
    is how the run was set up: UsageError, exit 2. The networks assume a checked guide.
    """
    import numpy as np

    if kind == "none":
        if guide is not None:
            raise UsageError("This model uses no masks; run it without a mask.")
        return
    if guide is None:
        raise UsageError("This model needs SAM masks; compute masks or pass a mask file.")
    if guide.shape != tuple(shape[:2]):
        raise MaskError(
            f"The mask is {guide.shape[1]}x{guide.shape[0]} but the image is "
            f"{shape[1]}x{shape[0]}; use masks made from this image."
        )
    if kind == "segmask" and guide.dtype != np.uint8:
        raise MaskError(f"A segmask must be uint8 gray values, got {guide.dtype}; reread it.")
    if kind == "labels":
        if not np.issubdtype(guide.dtype, np.integer):
            raise MaskError(
                f"A label map must hold integers, got {guide.dtype}; rebuild the groups."
            )
        # -1 marks pixels in no group (a groups .npz with gaps): upstream pools them with
        # the padding, and so does the MAP unit; a map without any group is no masks at all
        if guide.size and (int(guide.min()) < -1 or int(guide.max()) < 0):
            raise MaskError(
                "A label map must number groups from 0 (-1: in no group); rebuild the groups."
            )


def result_from_maskset(maskset: MaskSet) -> MaskResult:
    """Encode generated masks (generator order) into segmask and groups, upstream's way."""
    from sam_deblur_cli.masks.encode import (
        count_groups,
        encode_segmask,
        encode_segmask_windows,
        labels_from_segmask,
    )

    windows = getattr(maskset, "iter_windows", None)  # masks inside their boxes (fast set)
    if windows is not None:
        segmask = encode_segmask_windows(windows(), maskset.shape)
    else:
        segmask = encode_segmask(maskset.iter_masks(), maskset.shape)
    labels = labels_from_segmask(segmask)
    return MaskResult(segmask, labels, count_groups(labels), len(maskset), maskset)


def result_from_segmask(segmask: np.ndarray, count: int = 0) -> MaskResult:
    """A MaskResult for a segmask that was stored (file, cache): no individual masks."""
    from sam_deblur_cli.masks.encode import count_groups, labels_from_segmask

    labels = labels_from_segmask(segmask)
    return MaskResult(segmask, labels, count_groups(labels), count)


def load_mask_file(path: str | Path, shape: tuple[int, int]) -> MaskResult:
    """Read a segmask PNG or an upstream groups ``.npz`` for an image of ``shape`` (H, W)."""
    from sam_deblur_cli.masks.formats import load_mask_file as _load

    return _load(path, shape)


class MaskGenerator:
    """SAM for one run: loaded on the first cache miss, then reused for every image.

    ``recipe`` is the recipe to follow (overrides already applied, see
    ``sam.override_recipe``): its ``channel_order`` and ``amg`` parameters; the SAM entry
    is ``sam_entry_name``. ``device`` is a torch device string (``devices.resolve_device``).
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
    ) -> None:
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
            model = sam.load_sam(self.entry, device=self.device, offline=self.offline)
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
        )
