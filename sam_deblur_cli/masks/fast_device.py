"""The fast generator's work kept on the model's device (the CUDA path), stock results.

``FastMaskGenerator.generate`` hands a CUDA SAM here; the functions are device-agnostic,
so the tests run them on the CPU against segment-anything's generator.

Batch size does not change the masks. In segment-anything 1.0's
``SamAutomaticMaskGenerator._process_crop`` the points go through ``_process_batch`` in
batches of ``points_per_batch``; each prompt is treated on its own there (prompt encoder,
mask decoder with the image embedding repeated per prompt, IoU and stability filters,
boxes), the batches are concatenated in point order (``MaskData.cat``) and one box NMS
runs over all of them. So which masks come out, their order and their records do not
depend on ``points_per_batch``; only the arithmetic may, where a different batch shape
picks a different matmul kernel (float rounding), which the tests bound. The recipe keeps
recording the value; here prompt batches are sized to the device instead.

Flow, with no host synchronisation inside the prompt loop:

1. every prompt batch is decoded into device tensors (logits P x 3 x 256 x 256, IoU);
2. the IoU filter (one synchronisation: the survivors' count), then the survivors'
   full-resolution statistics in chunks on the device, with segment-anything's own
   functions on ``Sam.postprocess_masks``' chain (so stability scores, areas and boxes are
   the stock values), the stability filter and box NMS (torchvision's device kernel);
3. the kept masks brought to full resolution again in chunks, each one's gray value added
   into a float32 accumulator on the device (integer sums below 2**24: exact in any
   order), clipped to uint8: the segmask, moved to the host once with the records.

torch, torchvision and segment_anything are imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from sam_deblur_cli.masks.maskset import MaskRecord

if TYPE_CHECKING:
    import numpy as np
    import torch

    from sam_deblur_cli.masks.fast import FastMaskGenerator

CHUNK_BYTES = 1 << 30  # full-resolution float32 masks in flight at once (CUDA)
CPU_CHUNK_BYTES = 1 << 28
PROMPT_BYTES = 8 * 3 * 256 * 256 * 4  # a prompt's decoder working set, roughly (3 masks)


def prompt_batch(device: torch.device, points_per_batch: int, points: int) -> int:
    """Prompts per decoder call: the recipe's on the CPU, as many as a quarter of the free
    memory holds on CUDA (at least the recipe's, at most all points)."""
    import torch

    if device.type != "cuda":
        return points_per_batch
    free, _ = torch.cuda.mem_get_info(device)
    return max(points_per_batch, min(points, free // 4 // PROMPT_BYTES))


def generate_on_device(gen: FastMaskGenerator, image: np.ndarray) -> DeviceMaskSet:
    """``gen``'s masks of ``image`` (H x W x 3 uint8, SAM's channel order), computed on the
    model's device; equal to segment-anything's generator with ``gen.params``."""
    import numpy as np
    import torch
    from segment_anything import SamPredictor
    from segment_anything.utils.amg import build_point_grid

    from sam_deblur_cli.masks.fast_decoder import FastMaskDecoder

    sam, params = gen.sam, gen.params
    predictor = SamPredictor(sam)
    predictor.set_image(image)
    h, w = image.shape[:2]
    if gen._decoder is None:
        gen._decoder = FastMaskDecoder(sam)
    ctx = gen._decoder.prepare(predictor.features)
    predictor.reset_image()
    assert params.points_per_side is not None
    points = build_point_grid(params.points_per_side) * np.array([[w, h]])
    in_points = torch.as_tensor(predictor.transform.apply_coords(points, (h, w)), device=sam.device)
    step = prompt_batch(sam.device, params.points_per_batch, len(points))
    decoded = [gen.decode_points(ctx, in_points[i : i + step]) for i in range(0, len(points), step)]
    low = torch.cat([d[0] for d in decoded]).flatten(0, 1)
    iou = torch.cat([d[1] for d in decoded]).flatten(0, 1)
    index = torch.arange(len(iou), device=iou.device)
    if params.pred_iou_thresh > 0.0:
        index = index[iou > params.pred_iou_thresh]
    chain = _Chain(tuple(predictor.input_size), (h, w), sam.image_encoder.img_size)
    kept, stats = _filter_and_nms(gen, low, iou, index, chain)
    segmask = chain.segmask(low[kept], sam.mask_threshold)
    columns = [t.cpu().tolist() for t in (kept, *stats)]
    records = [
        MaskRecord(
            area=area,
            bbox=(box[0], box[1], box[2] - box[0], box[3] - box[1]),
            predicted_iou=score,
            stability_score=stable,
            point_coords=(float(points[k // 3][0]), float(points[k // 3][1])),
            crop_box=(0, 0, w, h),
        )
        for k, score, stable, area, box in zip(*columns, strict=True)
    ]
    return DeviceMaskSet(records, low[kept], chain, sam.mask_threshold, segmask.cpu().numpy())


def _filter_and_nms(
    gen: FastMaskGenerator,
    low: torch.Tensor,
    iou: torch.Tensor,
    index: torch.Tensor,
    chain: _Chain,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """IoU survivors ``index`` -> (kept candidate indices in NMS order, their IoU,
    stability, area, XYXY box), all on the device."""
    import torch
    from segment_anything.utils.amg import batched_mask_to_box, calculate_stability_score
    from torchvision.ops.boxes import batched_nms

    threshold, offset = gen.sam.mask_threshold, gen.params.stability_score_offset
    parts: list[tuple[torch.Tensor, ...]] = []
    for chunk in chain.chunks(index):
        full = chain.full(low[chunk])
        stability = calculate_stability_score(full, threshold, offset)
        above = full > threshold
        area = above.sum((-1, -2))
        parts.append((chunk, stability, area, batched_mask_to_box(above)))
    if parts:
        index, stability, area, boxes = (torch.cat(p) for p in zip(*parts, strict=True))
    else:
        stability = torch.zeros(0, device=low.device)
        area = torch.zeros(0, dtype=torch.int64, device=low.device)
        boxes = torch.zeros(0, 4, dtype=torch.int64, device=low.device)
    if gen.params.stability_score_thresh > 0.0:
        keep = stability >= gen.params.stability_score_thresh
        index, stability, area, boxes = index[keep], stability[keep], area[keep], boxes[keep]
    scores = iou[index]
    order = batched_nms(boxes.float(), scores, torch.zeros_like(scores), gen.params.box_nms_thresh)
    return index[order], (scores[order], stability[order], area[order], boxes[order])


class _Chain:
    """``Sam.postprocess_masks`` (its two bilinear resizes and the crop between), in chunks."""

    def __init__(
        self, input_size: tuple[int, ...], original_size: tuple[int, int], img_size: int
    ) -> None:
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.original_size = original_size
        self.img_size = img_size

    def full(self, low: torch.Tensor) -> torch.Tensor:
        """n x 256 x 256 logits -> n x H x W float32, as ``Sam.postprocess_masks``."""
        import torch.nn.functional as F

        size = (self.img_size, self.img_size)
        up = F.interpolate(low[:, None], size, mode="bilinear", align_corners=False)
        up = up[..., : self.input_size[0], : self.input_size[1]]
        return F.interpolate(up, self.original_size, mode="bilinear", align_corners=False)[:, 0]

    def chunks(self, index: torch.Tensor) -> Iterator[torch.Tensor]:
        """``index`` in pieces whose full-resolution masks (and the 1024 x 1024 step) fit
        the chunk budget of its device."""
        budget = CHUNK_BYTES if index.device.type == "cuda" else CPU_CHUNK_BYTES
        h, w = self.original_size
        per_mask = 4 * (h * w + self.img_size * self.img_size) * 2
        size = max(1, budget // per_mask)
        yield from index.split(size)

    def segmask(self, low: torch.Tensor, threshold: float) -> torch.Tensor:
        """Kept logits (output order) -> the upstream segmask, uint8 H x W on the device."""
        import torch

        from sam_deblur_cli.masks.encode import mask_weight

        weights = torch.tensor([float(mask_weight(i)) for i in range(len(low))], device=low.device)
        acc = torch.zeros(self.original_size, dtype=torch.float32, device=low.device)
        for chunk in self.chunks(torch.arange(len(low), device=low.device)):
            above = self.full(low[chunk]) > threshold
            acc += (above * weights[chunk, None, None]).sum(0)
        return acc.clamp_(0.0, 255.0).to(torch.uint8)


class DeviceMaskSet:
    """Kept masks as low-res logits on the device, with their segmask already made."""

    def __init__(
        self,
        records: list[MaskRecord],
        logits: torch.Tensor,
        chain: _Chain,
        threshold: float,
        segmask: np.ndarray,
    ) -> None:
        self.shape = chain.original_size
        self.records = records
        self.segmask = segmask  # uint8 H x W, what encode.encode_segmask gives for these masks
        self._logits = logits
        self._chain = chain
        self._threshold = threshold

    def __len__(self) -> int:
        return len(self.records)

    def iter_masks(self) -> Iterator[Any]:
        """Yield bool H x W numpy masks in generator order, equal to the stock generator's."""
        import torch

        with torch.inference_mode():
            for logits in self._logits:
                yield (self._chain.full(logits[None])[0] > self._threshold).cpu().numpy()
