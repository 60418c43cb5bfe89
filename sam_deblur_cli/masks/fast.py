"""Fast automatic mask generator: the stock generator's masks at a fraction of the cost.

Same semantics as segment-anything 1.0's generator for ``crop_n_layers=0``,
``min_mask_region_area=0`` and a regular point grid (other settings are handed to the stock
generator, with a log line): point grid, ResizeLongestSide, multimask logits, IoU filter,
stability score with its thresholds and offset, boxes, box NMS with the IoU predictions as
scores, output in NMS keep order. What differs is the cost:

- the decoder shares its per-image work across prompts (``fast_decoder``);
- candidates are dropped by predicted IoU on their 256 x 256 logits, before any upscaling;
- stability scores, areas and boxes of the survivors come from ``upscale.ExactUpscaler``:
  the stock upscaling chain run a few candidates at a time (never all candidates at full
  resolution at once) or, when the image is upscaled 2x or more, an exact cell-wise
  evaluation that computes only the pixels near a threshold; both give the stock values;
- kept masks stay as low-res logits; ``FastMaskSet.iter_windows`` brings them to full
  resolution one at a time, inside their boxes only, bit-identical to the stock chain.

torch and segment_anything are imported inside functions: ``sam_deblur_cli.masks`` is
imported by the CLI at start-up.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sam_deblur_cli.amg import AmgParams
from sam_deblur_cli.errors import InputError
from sam_deblur_cli.masks.maskset import MaskRecord, MaskSet
from sam_deblur_cli.masks.stock import StockMaskGenerator
from sam_deblur_cli.masks.upscale import ExactUpscaler, one_cpu_thread

if TYPE_CHECKING:
    import numpy as np
    import torch
    from segment_anything.modeling import Sam

    from sam_deblur_cli.masks.fast_decoder import FastMaskDecoder, ImageContext

logger = logging.getLogger(__name__)


@dataclass
class _Candidates:
    """Survivors of one prompt batch (all on the model's device)."""

    logits: torch.Tensor  # K x 256 x 256 float32, low-res mask logits
    iou: torch.Tensor  # K float32
    stability: torch.Tensor  # K float32
    boxes: torch.Tensor  # K x 4 int64, XYXY inclusive, original-image pixels
    areas: torch.Tensor  # K int64
    points: torch.Tensor  # K x 2 float64 on the CPU, (x, y) original-image pixels


class FastMaskGenerator:
    """``SamAutomaticMaskGenerator(sam, **params.as_kwargs())`` whose ``generate`` returns a
    MaskSet. ``params``: the stock generator's parameters (``recipe.AmgParams``, defaults
    when None), with the same meanings; ``point_grids`` as the stock generator's (then
    ``params.points_per_side`` must be None).
    """

    def __init__(
        self,
        sam: Sam,
        params: AmgParams | None = None,
        *,
        point_grids: list[np.ndarray] | None = None,
    ) -> None:
        params = AmgParams() if params is None else params
        if (params.points_per_side is None) == (point_grids is None):
            raise ValueError("give exactly one of points_per_side and point_grids")
        self.sam = sam
        self.params = params
        self.point_grids = point_grids
        self.delegate_reason = _delegate_reason(params, point_grids)
        self._decoder: FastMaskDecoder | None = None

    def generate(self, image: np.ndarray) -> MaskSet:
        """Masks of one image, in the stock generator's order.

        ``image``: H x W x 3 uint8, in the channel order SAM is meant to see (RGB for SAM's
        own weights; the caller applies a recipe's BGR order before this).
        """
        import torch

        _check_image(image)
        if self.delegate_reason:
            logger.info("Using the stock mask generator: %s.", self.delegate_reason)
            return self._generate_stock(image)
        with torch.inference_mode():
            if self.sam.device.type == "cuda":  # the whole pipeline on the GPU
                from sam_deblur_cli.masks.fast_device import generate_on_device

                return generate_on_device(self, image)
            return self._generate_fast(image)

    def decode_points(
        self, ctx: ImageContext, in_points: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Foreground points B x 2 (model input frame) -> (logits B x 3 x 256 x 256, IoU B x 3)."""
        import torch

        labels = torch.ones(in_points.shape[0], 1, dtype=torch.int, device=in_points.device)
        assert self._decoder is not None
        return self._decoder.predict(ctx, in_points[:, None, :], labels, multimask_output=True)

    def _generate_fast(self, image: np.ndarray) -> MaskSet:
        import numpy as np
        import torch
        from segment_anything import SamPredictor
        from segment_anything.utils.amg import build_point_grid

        from sam_deblur_cli.masks.fast_decoder import FastMaskDecoder

        predictor = SamPredictor(self.sam)
        predictor.set_image(image)
        orig_h, orig_w = image.shape[:2]
        input_size = tuple(predictor.input_size)
        if self._decoder is None:
            self._decoder = FastMaskDecoder(self.sam)
        ctx = self._decoder.prepare(predictor.features)
        predictor.reset_image()
        upscaler = ExactUpscaler(
            (input_size[0], input_size[1]),
            (orig_h, orig_w),
            self.sam.image_encoder.img_size,
            self.sam.device,
        )
        assert self.params.points_per_side is not None
        points = build_point_grid(self.params.points_per_side) * np.array([[orig_w, orig_h]])
        batches = []
        for start in range(0, len(points), self.params.points_per_batch):
            batch = points[start : start + self.params.points_per_batch]
            in_points = predictor.transform.apply_coords(batch, (orig_h, orig_w))
            low, iou = self.decode_points(ctx, torch.as_tensor(in_points, device=self.sam.device))
            batches.append(self._filter_batch(low, iou, torch.as_tensor(batch), upscaler))
        with one_cpu_thread(self.sam.device):  # small ops only
            return self._nms(batches, upscaler)

    def _filter_batch(
        self,
        low: torch.Tensor,
        iou: torch.Tensor,
        points: torch.Tensor,
        upscaler: ExactUpscaler,
    ) -> _Candidates:
        """IoU filter on low-res logits, then stability and boxes on the exact upscaled logits."""
        import torch

        low, iou = low.flatten(0, 1), iou.flatten(0, 1)
        # Points stay float64 on the CPU, as in segment_anything (some devices lack float64).
        points = points.repeat_interleave(low.shape[0] // len(points), dim=0)
        if self.params.pred_iou_thresh > 0.0:
            keep = iou > self.params.pred_iou_thresh
            low, iou, points = low[keep], iou[keep], points[keep.cpu()]
        threshold = self.sam.mask_threshold
        offset = self.params.stability_score_offset
        chunk = upscaler.chunk
        stats = [
            upscaler.stats(low[i : i + chunk], threshold + offset, threshold - offset, threshold)
            for i in range(0, len(low), chunk)
        ]
        if stats:
            inter, union, areas, boxes = (torch.cat(p) for p in zip(*stats, strict=True))
        else:
            inter = union = areas = torch.zeros(0, dtype=torch.int64, device=low.device)
            boxes = torch.zeros(0, 4, dtype=torch.int64, device=low.device)
        # int32 / int32 as in segment_anything's calculate_stability_score (0/0 gives NaN).
        stability = inter.to(torch.int32) / union.to(torch.int32)
        keep = torch.ones_like(iou, dtype=torch.bool)
        if self.params.stability_score_thresh > 0.0:
            keep = stability >= self.params.stability_score_thresh
        return _Candidates(
            logits=low[keep],
            iou=iou[keep],
            stability=stability[keep],
            boxes=boxes[keep],
            areas=areas[keep],
            points=points[keep.cpu()],
        )

    def _nms(self, batches: list[_Candidates], upscaler: ExactUpscaler) -> FastMaskSet:
        """Box NMS over all survivors, scored by predicted IoU; keep order is output order."""
        import torch
        from torchvision.ops.boxes import batched_nms

        cand = _Candidates(
            *(torch.cat(parts) for parts in zip(*(vars(b).values() for b in batches), strict=True))
        )
        keep = batched_nms(
            cand.boxes.float(),
            cand.iou,
            torch.zeros(len(cand.boxes), device=cand.iou.device),
            self.params.box_nms_thresh,
        )
        h, w = upscaler.original_size
        kept = keep.cpu()
        columns = zip(
            cand.areas.cpu()[kept].tolist(),
            cand.boxes.cpu()[kept].tolist(),
            cand.iou.cpu()[kept].tolist(),
            cand.stability.cpu()[kept].tolist(),
            cand.points[kept].tolist(),
            strict=True,
        )
        records = [
            MaskRecord(
                area=area,
                bbox=_xyxy_to_xywh(box),
                predicted_iou=iou,
                stability_score=stability,
                point_coords=(point[0], point[1]),
                crop_box=(0, 0, w, h),
            )
            for area, box, iou, stability, point in columns
        ]
        return FastMaskSet(records, cand.logits[keep], upscaler, self.sam.mask_threshold)

    def _generate_stock(self, image: np.ndarray) -> MaskSet:
        return StockMaskGenerator(self.sam, self.params, point_grids=self.point_grids)(image)


class FastMaskSet:
    """Kept masks as low-res logits; full-resolution bool masks are made one at a time."""

    def __init__(
        self,
        records: list[MaskRecord],
        logits: torch.Tensor,
        upscaler: ExactUpscaler,
        mask_threshold: float,
    ) -> None:
        self.shape = upscaler.original_size
        self.records = records
        self._logits = logits
        self._upscaler = upscaler
        self._threshold = mask_threshold

    def __len__(self) -> int:
        return len(self.records)

    def iter_masks(self) -> Iterator[np.ndarray]:
        """Yield bool H x W masks in generator order, equal to the stock generator's."""
        import numpy as np

        for (x0, y0), window in self.iter_windows():
            mask = np.zeros(self.shape, dtype=np.bool_)
            mask[y0 : y0 + window.shape[0], x0 : x0 + window.shape[1]] = window
            yield mask

    def iter_windows(self) -> Iterator[tuple[tuple[int, int], np.ndarray]]:
        """Yield ((x0, y0), bool window) per mask in generator order: the mask inside its
        box (``records[i].bbox``), which holds all of its pixels; work is per box pixel."""
        import torch

        with torch.inference_mode():
            for logits, record in zip(self._logits, self.records, strict=True):
                x0, y0, w, h = record.bbox
                box = (x0, y0, x0 + w, y0 + h)
                yield (x0, y0), self._upscaler.mask_window(logits, self._threshold, box)


def _xyxy_to_xywh(box: list[int]) -> tuple[int, int, int, int]:
    return (box[0], box[1], box[2] - box[0], box[3] - box[1])


def _delegate_reason(params: AmgParams, point_grids: list[np.ndarray] | None) -> str:
    """Why these settings go to the stock generator ('' when the fast path handles them)."""
    reasons = []
    if params.crop_n_layers > 0:
        reasons.append("crop_n_layers > 0")
    if params.min_mask_region_area > 0:
        reasons.append("min_mask_region_area > 0")
    if point_grids is not None:
        reasons.append("explicit point_grids")
    return ", ".join(reasons)


def _check_image(image: np.ndarray) -> None:
    import numpy as np

    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(
            f"Mask generation needs an H x W x 3 uint8 image, got {image.dtype} {image.shape}; "
            "convert the image to 8-bit RGB first."
        )
