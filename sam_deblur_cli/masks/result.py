"""One image's masks as the networks take them (:class:`MaskResult`), how they are made from
generated or stored masks, and the one check of a guide against its image.

Light (no numpy, no torch at import); the package re-exports every name, and the modules
inside ``masks`` import them from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sam_deblur_cli.errors import MaskError, UsageError

if TYPE_CHECKING:
    import numpy as np

    from sam_deblur_cli.masks.maskset import MaskSet
    from sam_deblur_cli.nets import GuideKind


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

    @property
    def plain_label(self) -> int | None:
        """The group an overlay leaves uncoloured: label 0 when the segmask has pixels no SAM
        mask covers (gray value 0 is the smallest, so its group is label 0), else None."""
        if self.segmask is not None and not self.segmask.all():
            return 0
        return None

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

    segmask = getattr(maskset, "segmask", None)  # made on the GPU by masks.fast_device
    windows = getattr(maskset, "iter_windows", None)  # masks inside their boxes (fast set)
    if segmask is None and windows is not None:
        segmask = encode_segmask_windows(windows(), maskset.shape)
    elif segmask is None:
        segmask = encode_segmask(maskset.iter_masks(), maskset.shape)
    labels = labels_from_segmask(segmask)
    return MaskResult(segmask, labels, count_groups(labels), len(maskset), maskset)


def result_from_segmask(segmask: np.ndarray, count: int = 0) -> MaskResult:
    """A MaskResult for a segmask that was stored (file, cache): no individual masks."""
    from sam_deblur_cli.masks.encode import count_groups, labels_from_segmask

    labels = labels_from_segmask(segmask)
    return MaskResult(segmask, labels, count_groups(labels), count)
