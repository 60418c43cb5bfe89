"""The generated-mask container shared by the stock and the fast generator.

A ``MaskSet`` keeps its masks in generator order (the order ``generate()`` returns them,
which the segmask encoding depends on) and hands out full-resolution masks one at a time,
so consumers never hold masks x pixels in memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class MaskRecord:
    """Metadata of one mask, with segment-anything's meanings and units."""

    area: int
    bbox: tuple[int, int, int, int]  # XYWH in original-image pixels
    predicted_iou: float
    stability_score: float
    point_coords: tuple[float, float]  # (x, y) of the prompt point, original-image pixels
    crop_box: tuple[int, int, int, int]  # XYWH


class MaskSet(Protocol):
    """Masks of one image in generator order. ``iter_masks`` yields bool H x W arrays."""

    shape: tuple[int, int]
    records: list[MaskRecord]

    def __len__(self) -> int: ...

    def iter_masks(self) -> Iterator[np.ndarray]: ...


class ListMaskSet:
    """A MaskSet over masks already held in memory (stock generator output, tests)."""

    def __init__(
        self, shape: tuple[int, int], masks: Sequence[np.ndarray], records: Sequence[MaskRecord]
    ) -> None:
        if len(masks) != len(records):
            raise ValueError("masks and records differ in length")
        self.shape = shape
        self.records = list(records)
        self._masks = list(masks)

    def __len__(self) -> int:
        return len(self._masks)

    def iter_masks(self) -> Iterator[np.ndarray]:
        yield from self._masks
