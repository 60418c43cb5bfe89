"""masks/upscale.py: ExactUpscaler's statistics and masks against Sam.postprocess_masks.

The oracle is segment_anything's upscaling chain restated (``_postprocess_masks``), on the
controlled logits the mask benchmark uses.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mask_bench import bench

from sam_deblur_cli.masks.upscale import ExactUpscaler


@pytest.mark.parametrize("shape", [(720, 1280), (2100, 1500), (300, 400), (1024, 1024)])
@pytest.mark.parametrize("by_rows", [True, False])
def test_upscaler_statistics_equal_full_resolution(shape: tuple[int, int], by_rows: bool) -> None:
    """Counts, boxes and masks equal those of Sam.postprocess_masks output, bit for bit."""
    from segment_anything.utils.amg import batched_mask_to_box

    up = ExactUpscaler(bench.input_size_of(shape), shape, 1024, "cpu")
    assert up.style is not None  # torch's kernel was reproduced on this machine
    up.by_rows = by_rows
    controlled = bench.ControlledLogits(bench.input_size_of(shape), n_cells=12, seed=3)
    points = torch.tensor([[100.0, 80.0], [400.0, 300.0], [900.0, 500.0]])
    low = controlled(points)[0].flatten(0, 1)
    low = torch.cat([low, torch.full((1, 256, 256), -5.0)])  # an empty mask too
    with torch.inference_mode():
        above, below, area, boxes = up.stats(low, 1.0, -1.0, 0.0)
        full = _postprocess_masks(low, bench.input_size_of(shape), shape)
    assert torch.equal(above, (full > 1.0).flatten(1).sum(1))
    assert torch.equal(below, (full > -1.0).flatten(1).sum(1))
    assert torch.equal(area, (full > 0.0).flatten(1).sum(1))
    assert torch.equal(boxes, batched_mask_to_box(full > 0.0))
    assert area[-1] == 0 and boxes[-1].tolist() == [0, 0, 0, 0]
    for k in (0, 4):
        assert np.array_equal(up.mask(low[k], 0.0), (full[k] > 0).numpy())


def _postprocess_masks(
    low: torch.Tensor, input_size: tuple[int, int], shape: tuple[int, int]
) -> torch.Tensor:
    """segment_anything's Sam.postprocess_masks for a 1024 encoder, restated: n x H x W."""
    up = F.interpolate(low[:, None], (1024, 1024), mode="bilinear", align_corners=False)
    up = up[..., : input_size[0], : input_size[1]]
    return F.interpolate(up, shape, mode="bilinear", align_corners=False)[:, 0]


@pytest.mark.parametrize(
    ("shape", "crop"),
    [((720, 1280), (145, 256)), ((2100, 1500), (256, 184)), ((1024, 1024), (256, 256))],
)
def test_upscaler_resizes_only_the_low_res_rows_the_crop_reads(
    shape: tuple[int, int], crop: tuple[int, int]
) -> None:
    """The first resize reads only the low-res rows/columns inside the input frame, and its
    output still equals the verbatim chain bit for bit, near the crop edge included."""
    up = ExactUpscaler(bench.input_size_of(shape), shape, 1024, "cpu")
    assert up._first_crop[:2] == crop
    low = torch.randn(3, 256, 256, generator=torch.Generator().manual_seed(5)) * 6
    low[:, crop[0] - 2 :, :] += 40.0  # the rows past the crop must not leak into it
    low[:, :, crop[1] - 2 :] -= 40.0
    with torch.inference_mode():
        assert torch.equal(
            up._stock_chain(low), _postprocess_masks(low, bench.input_size_of(shape), shape)
        )


@pytest.mark.parametrize("shape", [(2100, 1500), (300, 400)])
def test_mask_windows_at_their_boxes_hold_the_whole_mask(shape: tuple[int, int]) -> None:
    """A mask made inside its own box (the box ``stats`` gives) equals the full-resolution
    mask there, and the mask has no pixel outside it; other windows are exact too."""
    up = ExactUpscaler(bench.input_size_of(shape), shape, 1024, "cpu")
    controlled = bench.ControlledLogits(bench.input_size_of(shape), n_cells=30, seed=4)
    points = torch.tensor([[200.0, 100.0], [600.0, 400.0]])
    low = controlled(points)[0].flatten(0, 1)
    with torch.inference_mode():
        boxes = up.stats(low, 1.0, -1.0, 0.0)[3]
        full = _postprocess_masks(low, bench.input_size_of(shape), shape) > 0.0
    for k, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        window = up.mask_window(low[k], 0.0, (x0, y0, x1, y1))
        assert np.array_equal(window, full[k, y0 : y1 + 1, x0 : x1 + 1].numpy())
        assert window.sum() == full[k].sum() > 0
    odd = (7, shape[0] // 3, shape[1] // 2, shape[0] - 2)  # a window across mask edges
    window = up.mask_window(low[1], 0.0, odd)
    assert np.array_equal(window, full[1, odd[1] : odd[3] + 1, odd[0] : odd[2] + 1].numpy())
