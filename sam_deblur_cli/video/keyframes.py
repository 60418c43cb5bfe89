"""Key frames: which frames of a video get fresh SAM masks.

Every ``mask_every``-th frame, the first frame of each segment and any frame whose colours
differ from the frame before's by more than ``scene_cut`` (a cut, see :func:`scene_change`)
is a key frame; the frames in between reuse its masks.
"""

from __future__ import annotations

import numpy as np

SCENE_CUT = 0.12  # default scene_change threshold (measured; see scene_change)
_BINS = 16


class KeyFrames:
    """Decides which frames get fresh masks (see the module docstring)."""

    def __init__(self, mask_every: int, scene_cut: float | None) -> None:
        self.mask_every, self.scene_cut = mask_every, scene_cut
        self.last: int | None = None
        self.hist: np.ndarray | None = None

    def is_key(self, index: int, rgb: np.ndarray, *, force: bool = False) -> bool:
        hist = colour_histograms(rgb) if self.scene_cut is not None else None
        key = force or self.last is None or index - self.last >= self.mask_every
        if not key and hist is not None and self.hist is not None:
            key = _distance(hist, self.hist) > float(self.scene_cut or 0)
        self.hist = hist  # a cut is a jump from one frame to the next
        if key:
            self.last = index
        return key


def colour_histograms(rgb: np.ndarray) -> np.ndarray:
    """3 x 16 float: the R, G and B histograms (fractions) of a 32 x 32 area-averaged
    thumbnail of H x W x 3 uint8 or uint16 ``rgb``."""
    import cv2

    scale = np.float32(255.0 if rgb.dtype == np.uint8 else 65535.0)
    thumb = cv2.resize(rgb.astype(np.float32) / scale, (32, 32), interpolation=cv2.INTER_AREA)
    bins = np.minimum((thumb * _BINS).astype(np.int64), _BINS - 1).reshape(-1, 3)
    return np.stack([np.bincount(bins[:, c], minlength=_BINS) for c in range(3)]) / 1024.0


def scene_change(a: np.ndarray, b: np.ndarray) -> float:
    """How far apart two frames' colours are, 0 (same histograms) to 1 (no overlap): the
    total variation distance of their thumbnails' R, G and B histograms, averaged.

    Histograms ignore where things are, so camera motion barely moves them: 16 scikit-image
    photos panning 2-8 px a frame across a 160 x 120 view score at most 0.08 from one frame
    to the next, while cuts between two different of them score 0.16 or more (0.2+ for all
    but two pairs of look-alikes). SCENE_CUT sits between the two.
    """
    return _distance(colour_histograms(a), colour_histograms(b))


def _distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).sum(axis=1).mean() / 2)
