"""SAM masks -> segmask -> groups, exactly as upstream encoded them (docs upstream.md 5.3, 5.4).

Pure numpy. Data layouts:

- a *mask* is a bool H x W array (True = inside);
- the *segmask* is uint8 H x W, the gray image upstream saved and trained on;
- a *label map* is int64 H x W with groups 0..G-1 numbered by increasing gray value, and -1
  for pixels no group covers (only possible for a groups stack read from a file);
- a *groups stack* is bool G x 1 x H x W (as upstream stored it) or G x H x W.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from sam_deblur_cli.errors import MaskError

UNCOVERED = -1  # label of pixels outside every group; the MAP unit pools them together


def mask_weight(idx: int) -> int:
    """Gray value the idx-th mask (in generator order) adds: rises by 2, then falls past 127."""
    return 2 * (idx + 1) if idx < 127 else 2 * (255 - idx) - 1


def encode_segmask(masks: Iterable[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Encode masks (bool H x W, generator order) into the upstream segmask (uint8 H x W).

    Accumulates w(idx) in float32, clips to [0, 255] and casts, so overlaps make new values
    and clipping merges them. Masks are consumed one at a time; no masks -> all zeros.
    """
    height, width = shape
    acc = np.zeros((height, width), dtype=np.float32)
    for idx, mask in enumerate(masks):
        if mask.shape != acc.shape:
            raise MaskError(
                f"Mask {idx} is {mask.shape[1]}x{mask.shape[0]} pixels but the image is "
                f"{width}x{height}; generate the masks from this image."
            )
        inside = mask if mask.dtype == np.bool_ else mask != 0
        np.add(acc, np.float32(mask_weight(idx)), out=acc, where=inside)
    np.clip(acc, 0.0, 255.0, out=acc)
    return acc.astype(np.uint8)


def encode_segmask_windows(
    windows: Iterable[tuple[tuple[int, int], np.ndarray]], shape: tuple[int, int]
) -> np.ndarray:
    """``encode_segmask`` of masks given as ((x0, y0), bool window): each mask is its window
    placed at (x0, y0) and False elsewhere. Work is per window pixel, not per image pixel."""
    height, width = shape
    acc = np.zeros((height, width), dtype=np.float32)
    for idx, ((x0, y0), window) in enumerate(windows):
        rows, cols = window.shape
        if x0 < 0 or y0 < 0 or y0 + rows > height or x0 + cols > width:
            raise MaskError(
                f"Mask {idx} reaches past the {width}x{height} image; generate the masks "
                "from this image."
            )
        region = acc[y0 : y0 + rows, x0 : x0 + cols]
        np.add(region, np.float32(mask_weight(idx)), out=region, where=window)
    np.clip(acc, 0.0, 255.0, out=acc)
    return acc.astype(np.uint8)


def labels_from_segmask(segmask: np.ndarray) -> np.ndarray:
    """One group per distinct gray value, 0 included, numbered by increasing value (int64 H x W).

    O(H*W): a 256-entry lookup table instead of sorting the pixels.
    """
    if segmask.dtype != np.uint8 or segmask.ndim != 2:
        raise MaskError(
            f"A segmask must be an 8-bit gray image, got {segmask.dtype} with shape "
            f"{segmask.shape}; save it as a gray PNG."
        )
    present = np.bincount(segmask.ravel(), minlength=256) > 0
    lut = np.cumsum(present, dtype=np.int64) - 1
    return lut[segmask]


def labels_from_groups(stack: np.ndarray) -> np.ndarray:
    """Label map (int64 H x W) from an upstream groups stack (G x 1 x H x W or G x H x W).

    Empty slices are dropped and the others keep their order. Pixels no group covers get
    ``UNCOVERED`` (-1): upstream's MAP unit pools them together, like the padding. A pixel in
    two groups cannot be expressed as a label map and raises ``MaskError``. One pass per
    slice over its own pixels, no copy of the stack.
    """
    groups = _as_group_stack(stack)
    height, width = groups.shape[1:]
    labels = np.full(height * width, UNCOVERED, dtype=np.int64)
    label = overlapping = 0
    for group in groups:
        pixels = np.flatnonzero(group)
        if pixels.size == 0:
            continue
        overlapping += int(np.count_nonzero(labels[pixels] != UNCOVERED))
        labels[pixels] = label
        label += 1
    if overlapping:
        raise MaskError(
            f"The groups overlap on {overlapping} pixels but must partition the image; "
            "regenerate the file from a segmask (one group per gray value)."
        )
    return labels.reshape(height, width)


def groups_from_labels(labels: np.ndarray) -> np.ndarray:
    """Upstream groups stack (bool G x 1 x H x W) from a label map; -1 pixels are in no slice."""
    count = count_groups(labels)
    flat = labels.ravel()
    covered = np.flatnonzero(flat >= 0)
    stack = np.zeros(count * flat.size, dtype=np.bool_)
    stack[flat[covered] * flat.size + covered] = True  # slice label, pixel covered
    return stack.reshape(count, 1, *labels.shape)


def count_groups(labels: np.ndarray) -> int:
    """Number of groups G in a label map (labels 0..G-1; -1 does not count)."""
    return int(labels.max(initial=-1)) + 1


def _as_group_stack(stack: np.ndarray) -> np.ndarray:
    if stack.ndim == 4 and stack.shape[1] == 1:
        stack = stack[:, 0]
    if stack.ndim != 3:
        raise MaskError(
            f"A groups stack must be M x 1 x H x W or M x H x W, got shape {stack.shape}; "
            "save the groups with key 'masks' in that layout."
        )
    return stack if stack.dtype == np.bool_ else stack != 0  # 0/1 integer stacks too
