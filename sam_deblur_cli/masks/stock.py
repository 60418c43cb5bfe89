"""segment-anything's own automatic mask generator, returning a :class:`ListMaskSet`.

The one stock path: ``sam.make_generator(fast=False)`` and the fast generator's fallback
(``fast.FastMaskGenerator``) both run it. segment_anything is imported when one is made.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sam_deblur_cli.masks.maskset import ListMaskSet, MaskRecord

if TYPE_CHECKING:
    import numpy as np
    from segment_anything.modeling import Sam

    from sam_deblur_cli.amg import AmgParams


class StockMaskGenerator:
    """segment-anything's ``SamAutomaticMaskGenerator``, returning a :class:`ListMaskSet`.

    The one stock path: ``make_generator(fast=False)`` and the fast generator's fallback.
    """

    def __init__(
        self, sam: Sam, params: AmgParams, *, point_grids: list[np.ndarray] | None = None
    ) -> None:
        from segment_anything import SamAutomaticMaskGenerator

        self._amg = SamAutomaticMaskGenerator(
            sam, point_grids=point_grids, output_mode="binary_mask", **params.as_kwargs()
        )

    def __call__(self, image: np.ndarray) -> ListMaskSet:
        """Masks of an H x W x 3 uint8 image, handed to SAM exactly as given."""
        anns = self._amg.generate(image)
        masks = [ann["segmentation"] for ann in anns]
        records = [_record(ann) for ann in anns]
        return ListMaskSet((int(image.shape[0]), int(image.shape[1])), masks, records)


def _record(ann: dict[str, Any]) -> MaskRecord:
    x, y, w, h = (int(v) for v in ann["bbox"])
    cx, cy, cw, ch = (int(v) for v in ann["crop_box"])
    px, py = (float(v) for v in ann["point_coords"][0])
    return MaskRecord(
        area=int(ann["area"]),
        bbox=(x, y, w, h),
        predicted_iou=float(ann["predicted_iou"]),
        stability_score=float(ann["stability_score"]),
        point_coords=(px, py),
        crop_box=(cx, cy, cw, ch),
    )
