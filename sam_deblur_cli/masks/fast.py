"""Fast automatic mask generator: the stock generator's masks at a fraction of the cost.

Same semantics as segment-anything 1.0's generator for ``crop_n_layers=0``,
``min_mask_region_area=0`` and a regular point grid (other settings are handed to the stock
generator, with a log line): point grid, ResizeLongestSide, multimask logits, IoU filter,
stability score with its thresholds and offset, boxes, box NMS with the IoU predictions as
scores, output in NMS keep order. What differs is the cost:

- the decoder shares its per-image work across prompts (``fast_decoder``);
- candidates are dropped by predicted IoU on their 256 x 256 logits, before any upscaling;
- stability scores, areas and boxes of the survivors come from the stock upscaling chain
  run a few candidates at a time (never all candidates at full resolution at once) or,
  when the image is upscaled 2x or more, from an exact row-wise evaluation that computes
  only the pixels near a threshold (``_ExactUpscaler``); both give the stock values;
- kept masks stay as low-res logits; ``FastMaskSet.iter_masks`` brings them to full
  resolution one at a time, bit-identical to the stock chain.

torch and segment_anything are imported inside functions: ``sam_deblur_cli.masks`` is
imported by the CLI at start-up.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sam_deblur_cli.errors import InputError
from sam_deblur_cli.masks.maskset import ListMaskSet, MaskRecord, MaskSet

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
    """Drop-in for ``SamAutomaticMaskGenerator(sam, ...)`` whose ``generate`` returns a MaskSet.

    Parameters mirror the stock generator's, with the same meanings and defaults.
    """

    def __init__(
        self,
        sam: Sam,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
    ) -> None:
        if (points_per_side is None) == (point_grids is None):
            raise ValueError("give exactly one of points_per_side and point_grids")
        self.sam = sam
        self.points_per_side = points_per_side
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self._stock_params: dict[str, Any] = {
            "points_per_side": points_per_side,
            "points_per_batch": points_per_batch,
            "pred_iou_thresh": pred_iou_thresh,
            "stability_score_thresh": stability_score_thresh,
            "stability_score_offset": stability_score_offset,
            "box_nms_thresh": box_nms_thresh,
            "crop_n_layers": crop_n_layers,
            "crop_nms_thresh": crop_nms_thresh,
            "crop_overlap_ratio": crop_overlap_ratio,
            "crop_n_points_downscale_factor": crop_n_points_downscale_factor,
            "point_grids": point_grids,
            "min_mask_region_area": min_mask_region_area,
        }
        self.delegate_reason = _delegate_reason(crop_n_layers, min_mask_region_area, point_grids)
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
        upscaler = _ExactUpscaler(
            (input_size[0], input_size[1]),
            (orig_h, orig_w),
            self.sam.image_encoder.img_size,
            self.sam.device,
        )
        assert self.points_per_side is not None
        points = build_point_grid(self.points_per_side) * np.array([[orig_w, orig_h]])
        batches = []
        for start in range(0, len(points), self.points_per_batch):
            batch = points[start : start + self.points_per_batch]
            in_points = predictor.transform.apply_coords(batch, (orig_h, orig_w))
            low, iou = self.decode_points(ctx, torch.as_tensor(in_points, device=self.sam.device))
            batches.append(self._filter_batch(low, iou, torch.as_tensor(batch), upscaler))
        with _one_cpu_thread(self.sam.device):  # small ops only
            return self._nms(batches, upscaler)

    def _filter_batch(
        self,
        low: torch.Tensor,
        iou: torch.Tensor,
        points: torch.Tensor,
        upscaler: _ExactUpscaler,
    ) -> _Candidates:
        """IoU filter on low-res logits, then stability and boxes on the exact upscaled logits."""
        import torch

        low, iou = low.flatten(0, 1), iou.flatten(0, 1)
        # Points stay float64 on the CPU, as in segment_anything (some devices lack float64).
        points = points.repeat_interleave(low.shape[0] // len(points), dim=0)
        if self.pred_iou_thresh > 0.0:
            keep = iou > self.pred_iou_thresh
            low, iou, points = low[keep], iou[keep], points[keep.cpu()]
        threshold = self.sam.mask_threshold
        offset = self.stability_score_offset
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
        if self.stability_score_thresh > 0.0:
            keep = stability >= self.stability_score_thresh
        return _Candidates(
            logits=low[keep],
            iou=iou[keep],
            stability=stability[keep],
            boxes=boxes[keep],
            areas=areas[keep],
            points=points[keep.cpu()],
        )

    def _nms(self, batches: list[_Candidates], upscaler: _ExactUpscaler) -> FastMaskSet:
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
            self.box_nms_thresh,
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
        from segment_anything import SamAutomaticMaskGenerator

        anns = SamAutomaticMaskGenerator(self.sam, **self._stock_params).generate(image)
        records = [
            MaskRecord(
                area=int(a["area"]),
                bbox=(int(a["bbox"][0]), int(a["bbox"][1]), int(a["bbox"][2]), int(a["bbox"][3])),
                predicted_iou=float(a["predicted_iou"]),
                stability_score=float(a["stability_score"]),
                point_coords=(float(a["point_coords"][0][0]), float(a["point_coords"][0][1])),
                crop_box=(
                    int(a["crop_box"][0]),
                    int(a["crop_box"][1]),
                    int(a["crop_box"][2]),
                    int(a["crop_box"][3]),
                ),
            )
            for a in anns
        ]
        return ListMaskSet(image.shape[:2], [a["segmentation"] for a in anns], records)


class FastMaskSet:
    """Kept masks as low-res logits; full-resolution bool masks are made one at a time."""

    def __init__(
        self,
        records: list[MaskRecord],
        logits: torch.Tensor,
        upscaler: _ExactUpscaler,
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
        import torch

        with torch.inference_mode():
            for logits in self._logits:
                yield self._upscaler.mask(logits, self._threshold)


class _ExactUpscaler:
    """segment_anything's mask upscaling chain for one image size, with cheap statistics.

    The stock chain is: 256 x 256 logits -> bilinear to img_size^2 -> crop to the input size
    (hi x wi) -> bilinear to the original size (H x W), align_corners=False. Torch's bilinear
    kernel resizes columns, then combines two rows, so the chain equals: the same resizes up
    to G = resize(crop, (hi, W)), then output row y = combine(G[a_y], w_a, G[b_y], w_b).
    Each output pixel lies between G[a] and G[b] at its column, so a pixel whose bracket does
    not contain a threshold needs no evaluation; only the rest (mask edges) are computed one
    by one. The row taps and the rounding of ``combine`` are read off torch's kernel once per
    image size and checked bit for bit; if the check fails, the full-resolution chain is
    used instead (same results, slower). Below a 2x upscale the rows save too little, and
    the full-resolution chain is used too (``by_rows``).

    A "source" is what an output row reads: a pair of adjacent G rows (a, a+1), or a single
    G row (a, a) at the clamped borders. Rows reading the same source are consecutive.
    """

    def __init__(
        self,
        input_size: tuple[int, int],
        original_size: tuple[int, int],
        img_size: int,
        device: Any,
    ) -> None:
        self.input_size = input_size
        self.original_size = original_size
        self.img_size = img_size
        self.device = device
        self._crop_first_resize()
        self._read_row_taps()
        self.style = self._pick_style()
        if self.style is None:
            logger.warning(
                "Row-wise upscaling does not reproduce this torch build's kernel; "
                "using full-resolution upscaling for mask statistics (slower)."
            )
        # Rows pay off when each source feeds several output rows (an upscale of 2x or more).
        self.by_rows = self.style is not None and self.max_len >= 3 and self.all_used
        self.chunk = max(1, min(64, 12_000_000 // (input_size[0] * original_size[1])))

    def _read_row_taps(self) -> None:
        """Row taps of the last resize, from torch's kernel applied to an identity matrix."""
        import torch
        import torch.nn.functional as F

        hi, h = self.input_size[0], self.original_size[0]
        dev = self.device
        eye = torch.eye(hi, device=dev)[None, None]
        weights = F.interpolate(eye, (h, hi), mode="bilinear", align_corners=False)[0, 0]
        first, last = _taps(hi, h, dev)
        rows = torch.arange(h, device=dev)
        self.row_a, self.row_b = first, last
        self.w_a = weights[rows, first]
        self.w_b = torch.where(first != last, weights[rows, last], 0.0)
        # Sources 0..hi-2 are the pairs (a, a+1); then one source per single row used.
        is_pair = last == first + 1
        self.singles = torch.unique(first[~is_pair])
        single_slot = torch.searchsorted(self.singles, first)
        self.row_source = torch.where(is_pair, first, hi - 1 + single_slot)
        n_sources = hi - 1 + len(self.singles)
        self.source_len = torch.bincount(self.row_source, minlength=n_sources)
        start = torch.full((n_sources,), h, device=dev, dtype=torch.long)
        self.source_start = start.scatter_reduce(0, self.row_source, rows, "amin")
        self.source_used = self.source_len > 0
        self.all_used = bool(self.source_used.all())
        self.max_len = int(self.source_len.max())

    def _pick_style(self) -> str | None:
        """The rounding of ``combine`` that reproduces torch's kernel here, or None."""
        import torch

        if torch.device(self.device).type == "mps":  # no float64 there to emulate fma with
            return None
        gen = torch.Generator().manual_seed(0)
        side = self.img_size // 4
        low = (torch.randn(1, side, side, generator=gen) * 8).to(self.device)
        # Every output row, on a spread of columns (columns go through torch's own resize).
        cols = torch.linspace(0, self.original_size[1] - 1, 257, device=self.device).long()
        full = self._reference_chain(low)[0][:, cols]
        g = self._rows_source(low)[0][:, cols]
        for style in ("addcmul", "fma_a", "separate", "fma_b"):
            rows = _combine(
                g[self.row_a], self.w_a[:, None], g[self.row_b], self.w_b[:, None], style
            )
            if torch.equal(rows, full):
                return style
        return None

    def _reference_chain(self, low: torch.Tensor) -> torch.Tensor:
        """n x 256 x 256 -> n x H x W, ``Sam.postprocess_masks`` verbatim (for the checks)."""
        import torch.nn.functional as F

        size = (self.img_size, self.img_size)
        up = F.interpolate(low[:, None], size, mode="bilinear", align_corners=False)
        up = up[..., : self.input_size[0], : self.input_size[1]]
        return F.interpolate(up, self.original_size, mode="bilinear", align_corners=False)[:, 0]

    def _input_frame(self, low: torch.Tensor) -> torch.Tensor:
        """n x 256 x 256 -> n x 1 x hi x wi: the first resize, cropped to the input size.

        With ``_first_crop`` only the low-res rows and columns the crop reads are resized:
        r of them to r * 4 keeps the scale (and so every tap and weight) of the full resize;
        ``__init__`` checks the result against the verbatim chain.
        """
        import torch.nn.functional as F

        rows, cols, size = self._first_crop
        up = F.interpolate(low[:, None, :rows, :cols], size, mode="bilinear", align_corners=False)
        return up[..., : self.input_size[0], : self.input_size[1]]

    def _crop_first_resize(self) -> None:
        """Use the cropped first resize if it reproduces the verbatim chain here."""
        import torch

        side = self.img_size // 4  # SAM's low-res masks are a quarter of its input side
        self._first_crop = (side, side, (self.img_size, self.img_size))
        if side * 4 != self.img_size:
            return
        rows, cols = (min(side, -(-n // 4) + 1) for n in self.input_size)
        verbatim = self._first_crop
        self._first_crop = (rows, cols, (rows * 4, cols * 4))
        gen = torch.Generator().manual_seed(1)
        low = (torch.randn(1, side, side, generator=gen) * 8).to(self.device)
        if not torch.equal(self._stock_chain(low), self._reference_chain(low)):
            self._first_crop = verbatim

    def _stock_chain(self, low: torch.Tensor) -> torch.Tensor:
        """n x 256 x 256 -> n x H x W, equal to ``Sam.postprocess_masks``."""
        import torch.nn.functional as F

        up = self._input_frame(low)
        return F.interpolate(up, self.original_size, mode="bilinear", align_corners=False)[:, 0]

    def _rows_source(self, low: torch.Tensor) -> torch.Tensor:
        """n x 256 x 256 -> G, n x hi x W: the chain with its last resize on columns only."""
        import torch.nn.functional as F

        up = self._input_frame(low)
        out_size = (self.input_size[0], self.original_size[1])
        return F.interpolate(up, out_size, mode="bilinear", align_corners=False)[:, 0]

    def _classify(
        self, g: torch.Tensor, margin: torch.Tensor, top: float, bottom: float
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per source and column: surely above ``top`` at every row it feeds (n x S x W bool),
        and the (mask, source, column) entries that may exceed ``bottom`` but are not sure.

        ``margin`` (n) covers the rounding of ``combine`` (an output is a convex combination).
        """
        import torch

        margin = margin.view(-1, 1, 1)
        high, low = g > top + margin, g > bottom - margin
        n, pairs, width = g.shape[0], g.shape[1] - 1, g.shape[2]
        shape = (n, pairs + len(self.singles), width)
        above = torch.empty(shape, dtype=torch.bool, device=g.device)
        maybe = torch.empty(shape, dtype=torch.bool, device=g.device)
        torch.logical_and(high[:, :-1], high[:, 1:], out=above[:, :pairs])
        torch.logical_or(low[:, :-1], low[:, 1:], out=maybe[:, :pairs])
        above[:, pairs:], maybe[:, pairs:] = high[:, self.singles], low[:, self.singles]
        if not self.all_used:
            above &= self.source_used.view(1, -1, 1)
        maybe &= ~above
        i, s, x = maybe.nonzero(as_tuple=True)
        if self.all_used:
            return above, (i, s, x)
        used = self.source_used[s]
        return above, (i[used], s[used], x[used])

    def _exact_rows(
        self, g: torch.Tensor, index: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """For each step k, the output values at row ``source_start + k`` of the given
        (mask, source, column) entries: yields (values, rows, valid). Past a source's last
        row, entries repeat that last row and are marked not valid."""
        import torch

        i, s, x = index
        width = g.shape[2]
        flat = g.view(-1)
        base = i * (g.shape[1] * width) + x
        length, start = self.source_len[s], self.source_start[s]
        assert self.style is not None
        for step in range(self.max_len):
            y = start + torch.clamp(length - 1, max=step)
            va, vb = flat[base + self.row_a[y] * width], flat[base + self.row_b[y] * width]
            yield _combine(va, self.w_a[y], vb, self.w_b[y], self.style), y, length > step

    def stats(
        self, low: torch.Tensor, t_high: float, t_low: float, t_mask: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits n x 256 x 256 -> counts of upscaled values > t_high, > t_low, > t_mask
        (int64, n each) and boxes n x 4 (int64 XYXY, inclusive, zeros when empty) of > t_mask,
        equal to those computed on the output of ``Sam.postprocess_masks``."""
        if not self.by_rows:
            return self._stats_full(low, (t_high, t_low, t_mask))
        import torch

        thresholds = (t_high, t_low, t_mask)
        g = self._rows_source(low)
        # G's values are convex combinations of the low-res logits: bounded by them.
        above, index = self._classify(g, _margin(low.flatten(1)), max(thresholds), min(thresholds))
        sure = (above.sum(2, dtype=torch.int16) * self.source_len).sum(1)
        counts = [sure.clone() for _ in thresholds]
        box = _BoxBounds(self, above)
        owner, cols = index[0], index[2]
        with _one_cpu_thread(self.device):  # many small ops: see _one_cpu_thread
            for values, rows, valid in self._exact_rows(g, index):
                for count, t in zip(counts, thresholds, strict=True):
                    count.index_add_(0, owner, (valid & (values > t)).long())
                box.add(owner, rows, cols, values > t_mask)
        return counts[0], counts[1], counts[2], box.result()

    def _stats_full(
        self, low: torch.Tensor, thresholds: tuple[float, float, float]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The same statistics from the full-resolution chain, a chunk at a time.

        Row sums in int16 as segment_anything does (a row has fewer than 2**15 pixels);
        boxes from row and column maxima, which is ``batched_mask_to_box`` of ``> t``.
        """
        import torch

        full = self._stock_chain(low)
        counts = [
            (full > t).sum(-1, dtype=torch.int16).sum(-1, dtype=torch.int64) for t in thresholds
        ]
        h, w = self.original_size
        rows_any, cols_any = full.amax(2) > thresholds[2], full.amax(1) > thresholds[2]
        rows, cols = torch.arange(h, device=full.device), torch.arange(w, device=full.device)
        top, bottom = (
            torch.where(rows_any, rows, h).amin(1),
            torch.where(rows_any, rows, -1).amax(1),
        )
        left, right = (
            torch.where(cols_any, cols, w).amin(1),
            torch.where(cols_any, cols, -1).amax(1),
        )
        boxes = torch.stack([left, top, right, bottom], dim=1)
        return counts[0], counts[1], counts[2], torch.where(rows_any.any(1)[:, None], boxes, 0)

    def mask(self, low: torch.Tensor, threshold: float) -> np.ndarray:
        """Logits 256 x 256 -> bool H x W (numpy), equal to the stock chain thresholded."""
        if not self.by_rows:
            return (self._stock_chain(low[None])[0] > threshold).cpu().numpy()
        g = self._rows_source(low[None])
        above, index = self._classify(g, _margin(low.view(1, -1)), threshold, threshold)
        out = above[0].index_select(0, self.row_source)  # H x W: sources surely above
        width = out.shape[1]
        with _one_cpu_thread(self.device):
            for values, rows, _ in self._exact_rows(g, index):
                out.view(-1)[rows * width + index[2]] = values > threshold
        return out.cpu().numpy()


class _BoxBounds:
    """Running XYXY bounds of the pixels above a threshold, per mask of a chunk."""

    def __init__(self, upscaler: _ExactUpscaler, above: torch.Tensor) -> None:
        """Start from the sources surely above (``above``: n x S x W bool)."""
        import torch

        h, w = upscaler.original_size
        self.h, self.w = h, w
        start, length = upscaler.source_start, upscaler.source_len
        rows_any, cols_any = above.any(2), above.any(1)  # n x S, n x W
        cols = torch.arange(w, device=above.device)
        self.top = torch.where(rows_any, start, h).amin(1)
        self.bottom = torch.where(rows_any, start + length - 1, -1).amax(1)
        self.left = torch.where(cols_any, cols, w).amin(1)
        self.right = torch.where(cols_any, cols, -1).amax(1)

    def add(
        self, owner: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, inside: torch.Tensor
    ) -> None:
        """Widen by single pixels (owner mask, row, column) where ``inside`` holds."""
        import torch

        self.top.scatter_reduce_(0, owner, torch.where(inside, rows, self.h), "amin")
        self.bottom.scatter_reduce_(0, owner, torch.where(inside, rows, -1), "amax")
        self.left.scatter_reduce_(0, owner, torch.where(inside, cols, self.w), "amin")
        self.right.scatter_reduce_(0, owner, torch.where(inside, cols, -1), "amax")

    def result(self) -> torch.Tensor:
        """n x 4 int64 XYXY; [0, 0, 0, 0] for an empty mask, as segment_anything does."""
        import torch

        boxes = torch.stack([self.left, self.top, self.right, self.bottom], dim=1)
        empty = (self.right < self.left) | (self.bottom < self.top)
        return torch.where(empty[:, None], 0, boxes)


def _taps(size_in: int, size_out: int, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """First and last input index read by each output index of a bilinear resize."""
    import torch
    import torch.nn.functional as F

    eye = torch.eye(size_in, device=device)[None, None]
    weights = F.interpolate(eye, (size_out, size_in), mode="bilinear", align_corners=False)[0, 0]
    cols = torch.arange(size_in, device=device).expand(size_out, size_in)
    first = torch.where(weights != 0, cols, size_in).amin(1).clamp(max=size_in - 1)
    last = torch.where(weights != 0, cols, -1).amax(1).clamp(min=0)
    return first, last


def _margin(values: torch.Tensor) -> torch.Tensor:
    """Per row of ``values`` (n x ...), a bound on the rounding of a convex combination."""
    return 1e-4 + 1e-6 * values.abs().amax(dim=1)


def _combine(
    ga: torch.Tensor, wa: torch.Tensor, gb: torch.Tensor, wb: torch.Tensor, style: str
) -> torch.Tensor:
    """One bilinear tap pair in float32 with a given rounding (``addcmul``: torch's, fused on
    some CPUs; ``fma_*``: fused multiply-add emulated in float64)."""
    if style == "addcmul":
        import torch

        return torch.addcmul(gb * wb, ga, wa)
    if style == "separate":
        return ga * wa + gb * wb
    if style == "fma_a":
        return (ga.double() * wa.double() + (gb * wb).double()).float()
    return (gb.double() * wb.double() + (ga * wa).double()).float()


@contextmanager
def _one_cpu_thread(device: Any) -> Iterator[None]:
    """Run a loop of many small ops on one CPU thread, then restore the count.

    The exact-rows loops index a few thousand values per op; on 2 cores, two threads' per-op
    hand-offs cost more than they gain there (12 MP post-processing with the whole process on
    one thread: 41 CPU-s against 173 on two). The bulk resizes around them keep every thread.
    """
    import torch

    if torch.device(device).type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _xyxy_to_xywh(box: list[int]) -> tuple[int, int, int, int]:
    return (box[0], box[1], box[2] - box[0], box[3] - box[1])


def _delegate_reason(crop_n_layers: int, min_mask_region_area: int, point_grids: Any) -> str:
    """Why these settings go to the stock generator ('' when the fast path handles them)."""
    reasons = []
    if crop_n_layers > 0:
        reasons.append("crop_n_layers > 0")
    if min_mask_region_area > 0:
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
