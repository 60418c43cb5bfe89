"""masks/encode.py against an oracle written straight from upstream.md 5.3 / 5.4."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from sam_deblur_cli.errors import MaskError
from sam_deblur_cli.masks.encode import (
    UNCOVERED,
    encode_segmask,
    encode_segmask_windows,
    groups_from_labels,
    labels_from_groups,
    labels_from_segmask,
    mask_weight,
)


def oracle_segmask(masks: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """upstream.md 5.3 read literally: a float32 image, one pixel at a time."""
    height, width = shape
    acc = [[np.float32(0.0)] * width for _ in range(height)]
    for idx, mask in enumerate(masks):
        weight = np.float32(2 * (idx + 1) if idx < 127 else 2 * (255 - idx) - 1)
        for y in range(height):
            for x in range(width):
                if mask[y][x]:
                    acc[y][x] = np.float32(acc[y][x] + weight)
    out = np.zeros(shape, dtype=np.uint8)
    for y in range(height):
        for x in range(width):
            out[y, x] = int(min(max(float(acc[y][x]), 0.0), 255.0))
    return out


def oracle_labels(segmask: np.ndarray) -> np.ndarray:
    values = sorted({int(v) for v in segmask.ravel()})
    rank = {v: i for i, v in enumerate(values)}
    return np.array([[rank[int(v)] for v in row] for row in segmask], dtype=np.int64)


def random_masks(count: int, shape: tuple[int, int], seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random(shape) < rng.uniform(0.05, 0.6) for _ in range(count)]


def test_weights_follow_the_spec_on_both_sides_of_127_and_255() -> None:
    assert [mask_weight(i) for i in (0, 1, 126, 127, 128, 254, 255, 256)] == [
        2, 4, 254, 255, 253, 1, -1, -3,
    ]  # fmt: skip


@pytest.mark.parametrize(("count", "seed"), [(1, 0), (5, 1), (40, 2), (130, 3), (300, 4)])
def test_segmask_matches_the_oracle_with_overlaps_and_clipping(count: int, seed: int) -> None:
    shape = (7, 9)
    masks = random_masks(count, shape, seed)
    expected = oracle_segmask(masks, shape)
    got = encode_segmask(masks, shape)
    assert got.dtype == np.uint8 and got.shape == shape
    np.testing.assert_array_equal(got, expected)
    if count >= 40:  # the random stacks are deep enough that some pixels clip at 255
        assert (expected == 255).any()


@pytest.mark.parametrize(("count", "seed"), [(5, 1), (300, 4)])
def test_masks_given_as_windows_at_their_boxes_encode_the_same(count: int, seed: int) -> None:
    shape = (7, 9)
    masks = random_masks(count, shape, seed)
    windows = []
    for mask in masks:
        ys, xs = np.nonzero(mask)
        y0, x0 = (int(ys.min()), int(xs.min())) if ys.size else (0, 0)
        y1, x1 = (int(ys.max()), int(xs.max())) if ys.size else (0, 0)
        windows.append(((x0, y0), mask[y0 : y1 + 1, x0 : x1 + 1]))
    np.testing.assert_array_equal(
        encode_segmask_windows(windows, shape), oracle_segmask(masks, shape)
    )
    with pytest.raises(MaskError, match="reaches past"):
        encode_segmask_windows([((8, 0), np.ones((1, 2), bool))], shape)


def test_negative_weights_past_255_clip_to_zero() -> None:
    shape = (2, 2)
    empty = np.zeros(shape, dtype=bool)
    late = np.array([[True, False], [False, False]])
    masks = [empty] * 256 + [late]  # idx 256 adds -3 to an empty pixel
    got = encode_segmask(masks, shape)
    np.testing.assert_array_equal(got, oracle_segmask(masks, shape))
    assert got[0, 0] == 0


def test_overlap_makes_a_new_value() -> None:
    a = np.array([[True, True, False]])
    b = np.array([[False, True, True]])
    np.testing.assert_array_equal(encode_segmask([a, b], (1, 3)), [[2, 6, 4]])


def test_no_masks_give_all_zeros() -> None:
    got = encode_segmask([], (3, 4))
    assert got.shape == (3, 4) and got.dtype == np.uint8 and not got.any()


def test_masks_are_consumed_one_at_a_time_from_an_iterator() -> None:
    shape = (6, 5)
    masks = random_masks(20, shape, 7)

    def reused_buffer() -> Iterator[np.ndarray]:
        # One buffer, rewritten before every yield: only a one-pass consumer gets it right.
        buf = np.zeros(shape, dtype=bool)
        for mask in masks:
            buf[...] = mask
            yield buf

    np.testing.assert_array_equal(
        encode_segmask(reused_buffer(), shape), oracle_segmask(masks, shape)
    )


def test_a_mask_of_the_wrong_size_is_a_mask_error() -> None:
    with pytest.raises(MaskError, match="3x2 pixels but the image is 4x3"):
        encode_segmask([np.zeros((2, 3), dtype=bool)], (3, 4))


def test_labels_from_segmask_on_known_images() -> None:
    np.testing.assert_array_equal(
        labels_from_segmask(np.array([[0, 5], [5, 200]], dtype=np.uint8)), [[0, 1], [1, 2]]
    )
    # Without a zero the lowest value is group 0.
    np.testing.assert_array_equal(
        labels_from_segmask(np.array([[3, 3], [9, 3]], dtype=np.uint8)), [[0, 0], [1, 0]]
    )
    full_range = np.arange(256, dtype=np.uint8).reshape(16, 16)[::-1]
    np.testing.assert_array_equal(labels_from_segmask(full_range), full_range.astype(np.int64))


def test_labels_from_segmask_match_the_oracle_on_a_random_encoding() -> None:
    segmask = encode_segmask(random_masks(60, (12, 10), 5), (12, 10))
    labels = labels_from_segmask(segmask)
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, oracle_labels(segmask))


def test_labels_from_segmask_refuses_a_non_8_bit_image() -> None:
    with pytest.raises(MaskError, match="8-bit gray"):
        labels_from_segmask(np.zeros((2, 2), dtype=np.uint16))


def test_groups_round_trip_in_both_upstream_layouts() -> None:
    segmask = encode_segmask(random_masks(30, (9, 11), 9), (9, 11))
    labels = labels_from_segmask(segmask)
    stack = groups_from_labels(labels)
    assert stack.dtype == np.bool_ and stack.shape == (labels.max() + 1, 1, 9, 11)
    # Slice k holds exactly the pixels of the k-th smallest gray value.
    values = np.unique(segmask)
    for k, value in enumerate(values):
        np.testing.assert_array_equal(stack[k, 0], segmask == value)
    np.testing.assert_array_equal(labels_from_groups(stack), labels)
    np.testing.assert_array_equal(labels_from_groups(stack[:, 0]), labels)


def test_empty_slices_are_dropped_and_order_is_kept() -> None:
    a = np.array([[True, False], [False, False]])
    b = np.array([[False, True], [True, True]])
    empty = np.zeros((2, 2), dtype=bool)
    stack = np.stack([empty, b, empty, a])[:, None]
    np.testing.assert_array_equal(labels_from_groups(stack), [[1, 0], [0, 0]])


def test_uncovered_pixels_get_the_uncovered_label() -> None:
    a = np.array([[True, False], [False, False]])
    got = labels_from_groups(np.stack([a]))
    np.testing.assert_array_equal(got, [[0, UNCOVERED], [UNCOVERED, UNCOVERED]])
    assert groups_from_labels(got).sum() == 1


def test_overlapping_groups_are_a_mask_error() -> None:
    a = np.array([[True, True], [False, False]])
    b = np.array([[False, True], [True, True]])
    with pytest.raises(MaskError, match="overlap on 1 pixels"):
        labels_from_groups(np.stack([a, b]))


def test_a_stack_of_the_wrong_rank_is_a_mask_error() -> None:
    with pytest.raises(MaskError, match="M x 1 x H x W"):
        labels_from_groups(np.zeros((2, 2), dtype=bool))


def test_a_0_1_integer_stack_reads_like_a_bool_one() -> None:
    labels = labels_from_segmask(encode_segmask(random_masks(8, (5, 6), 11), (5, 6)))
    stack = groups_from_labels(labels)
    np.testing.assert_array_equal(labels_from_groups(stack.astype(np.uint8)), labels)
