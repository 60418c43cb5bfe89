"""The stock SAM-Deblur pipeline, as a user of the published code runs it (docs upstream.md).

cv2.imread (BGR) -> ``SamAutomaticMaskGenerator(sam).generate(bgr)`` (stock parameters, SAM
built with its own builder) -> the 8-bit segmask (5.3) -> one group per distinct value (5.4)
-> an upstream-style SegNAFNet whose MAP is ``bench_map.dense_map`` (the groups as M float
masks and an M x H x W x C broadcast product, section 4) and whose NAFNet is the plain
re-statement ``bench_network.UpstreamNAFNet`` -> clamp, uint8, cv2.imwrite. No tiling.

Run as a child process, one photo per run, under an address-space cap, so that running out
of memory is an exception reported as ``"status": "oom"`` rather than the kernel's OOM
killer picking a victim on a shared machine:

    python -m benchmarks.stock_pipeline SPEC.json RESULT.json

SPEC keys: ``image``, ``output``, ``sam_arch``, ``sam_checkpoint``, ``net_checkpoint``,
``net`` (width, enc_blk_nums, middle_blk_num, dec_blk_nums, seg_channel), ``tlc``,
``amg`` (generator keyword arguments; {} = stock defaults), ``device``, ``controlled``
(bool: decoder output replaced by ``bench_masks.ControlledLogits``), ``memory_cap_bytes``.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.bench_map import dense_map
from benchmarks.bench_masks import ControlledLogits, build_sam, input_size_of, patch_stock
from benchmarks.bench_network import UpstreamNAFNet

CONTROLLED_CELLS = 420  # partition size bench_masks uses: ~300-400 kept masks at 32 x 32 points
TINY_ARCH = "bench_tiny"  # sam_model_registry name of bench_masks' tiny SAM (smoke runs)


# --------------------------------------------------------------------------- masks (5.3, 5.4)


def upstream_segmask(masks: Iterable[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Upstream's encoding: float32 sum of w(idx) over each mask's pixels, clipped, uint8 H x W."""
    acc = np.zeros(shape, np.float32)
    for idx, mask in enumerate(masks):
        acc[mask] += 2 * (idx + 1) if idx < 127 else 2 * (255 - idx) - 1
    return np.clip(acc, 0, 255).astype(np.uint8)


def upstream_labels(segmask: np.ndarray) -> tuple[np.ndarray, int]:
    """Groups by distinct segmask value, increasing: (int64 H x W labels 0..M-1, M)."""
    values, labels = np.unique(segmask, return_inverse=True)
    return labels.reshape(segmask.shape).astype(np.int64), len(values)


# --------------------------------------------------------------------------- network (section 4)


class UpstreamSegNAFNet(UpstreamNAFNet):
    """The published SegNAFNet restated plainly: ``pre_seg``, ``pre_seg_in``, dense MAP, NAFNet.

    ``forward(image, labels)``: image 1 x 3 x H x W RGB [0, 1]; labels 1 x H x W int64, groups
    0..M-1 (None: one group, for TLC's dummy run). Returns 1 x 3 x H x W, not clamped.
    Parameter names are upstream's, so BasicSR checkpoints load strictly.
    """

    def __init__(
        self, width: int, enc: list[int], middle: int, dec: list[int], seg_channel: int = 2
    ) -> None:
        super().__init__(width, enc, middle, dec)
        self.intro = nn.Conv2d(3 + seg_channel, width, 3, padding=1)
        self.pre_seg = nn.Conv2d(3, seg_channel, 3, padding=1)
        self.pre_seg_in = nn.Conv2d(seg_channel, seg_channel, 1)

    def mask_average(self, image: Tensor, labels: Tensor) -> Tensor:
        """Padded 1 x 3 x Hp x Wp image, 1 x Hp x Wp labels (-1: none) -> 1 x seg x Hp x Wp."""
        groups = int(labels.max()) + 1
        return dense_map(self.pre_seg_in(self.pre_seg(image)), labels, groups)

    def forward(self, inp: Tensor, labels: Tensor | None = None) -> Tensor:
        _, _, h, w = inp.shape
        if labels is None:
            labels = torch.zeros(1, h, w, dtype=torch.int64, device=inp.device)
        ph, pw = (-h) % self.padder_size, (-w) % self.padder_size
        image = F.pad(inp, (0, pw, 0, ph))
        labels = F.pad(labels, (0, pw, 0, ph), value=-1)  # padding pixels belong to no group
        seg = self.mask_average(image, labels)
        return self.features(torch.cat([image, seg], dim=1), image)[:, :, :h, :w]


def load_stock_network(checkpoint: Path, net: dict[str, Any], tlc: bool) -> UpstreamSegNAFNet:
    """An UpstreamSegNAFNet with a BasicSR ``{"params": state_dict}`` file loaded strictly."""
    model = UpstreamSegNAFNet(
        net["width"],
        list(net["enc_blk_nums"]),
        net["middle_blk_num"],
        list(net["dec_blk_nums"]),
        net["seg_channel"],
    )
    model.load_state_dict(torch.load(checkpoint, map_location="cpu")["params"], strict=True)
    if tlc:
        model.set_tlc()
    return model.eval()


# --------------------------------------------------------------------------- SAM


def register_tiny_arch() -> None:
    """Make ``sam_model_registry["bench_tiny"]`` build bench_masks' tiny SAM (smoke runs)."""
    from segment_anything import sam_model_registry

    def build(checkpoint: str | None = None) -> Any:
        sam = build_sam("tiny")
        if checkpoint is not None:
            sam.load_state_dict(torch.load(checkpoint, map_location="cpu"))
        return sam

    sam_model_registry[TINY_ARCH] = build


def controlled_logits(shape: tuple[int, int]) -> ControlledLogits:
    """The decoder stand-in both pipelines use for an H x W photo (realistic survivors)."""
    return ControlledLogits(input_size_of(shape), n_cells=CONTROLLED_CELLS)


# --------------------------------------------------------------------------- the run


class Stages:
    """Wall time per named stage, and the stage running now (to say where memory ran out)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.current = ""

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        outer, self.current, start = self.current, name, time.perf_counter()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
        self.current = outer

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` whose calls are timed as stage ``name``."""

        def timed(*args: Any, **kwargs: Any) -> Any:
            with self(name):
                return fn(*args, **kwargs)

        return timed


def load_generator(spec: dict[str, Any], shape: tuple[int, int]) -> Any:
    """Stock SAM (its own builder, on ``spec["device"]``) in a stock generator for H x W
    photos (``shape`` sizes the controlled decoder stand-in when ``spec["controlled"]``)."""
    from segment_anything import SamAutomaticMaskGenerator, sam_model_registry

    sam = sam_model_registry[spec["sam_arch"]](checkpoint=spec["sam_checkpoint"])
    sam.to(spec["device"]).eval()
    generator = SamAutomaticMaskGenerator(sam, **spec["amg"])
    if spec["controlled"]:
        patch_stock(generator, controlled_logits(shape))
    return generator


def masks_with(generator: Any, bgr: np.ndarray, stages: Stages) -> tuple[np.ndarray, int]:
    """``generator.generate`` on the BGR photo -> (upstream segmask uint8 H x W, masks)."""
    with stages("masks"):
        anns = generator.generate(bgr)
    with stages("encode"):
        segmask = upstream_segmask((a["segmentation"] for a in anns), bgr.shape[:2])
    return segmask, len(anns)


def make_masks(spec: dict[str, Any], bgr: np.ndarray, stages: Stages) -> tuple[np.ndarray, int]:
    """Stock SAM + stock generator on the BGR photo -> (upstream segmask uint8 H x W, masks)."""
    with stages("load_sam"):
        generator = load_generator(spec, bgr.shape[:2])
    return masks_with(generator, bgr, stages)


def deblur(spec: dict[str, Any], bgr: np.ndarray, labels_np: np.ndarray, stages: Stages) -> None:
    """Upstream-style SegNAFNet on the BGR photo and its H x W group labels; writes uint8 BGR."""
    import cv2

    with stages("load_net"):
        net = load_stock_network(Path(spec["net_checkpoint"]), spec["net"], spec["tlc"])
        net = net.to(spec["device"])
    net.mask_average = stages.wrap("map", net.mask_average)  # type: ignore[method-assign]
    result = deblur_with(net, bgr, labels_np, stages)
    with stages("write"):
        cv2.imwrite(spec["output"], result)


def deblur_with(
    net: UpstreamSegNAFNet, bgr: np.ndarray, labels_np: np.ndarray, stages: Stages
) -> np.ndarray:
    """The loaded network (on its device) on the BGR photo and its H x W group labels -> the
    uint8 BGR result on the host (its transfer timed as "write", as before)."""
    device = next(net.parameters()).device
    labels = torch.from_numpy(labels_np)[None].to(device)
    rgb = torch.from_numpy(np.ascontiguousarray(bgr[:, :, ::-1])).to(device)
    x = rgb.permute(2, 0, 1)[None].float() / 255.0
    with torch.no_grad(), stages("network"):  # the MAP's share is also timed as "map"
        out = net(x, labels)
    with stages("write"):
        result = (out[0].clamp(0, 1) * 255.0).round().byte().permute(1, 2, 0).cpu().numpy()
    return np.ascontiguousarray(result[:, :, ::-1])


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """The whole stock pipeline on one photo; ``{"status", "seconds", "masks", "groups"}``.

    Out-of-memory (host or CUDA) returns ``status "oom"`` with the stage it happened in.
    """
    import cv2

    stages = Stages()
    result: dict[str, Any] = {"status": "ok", "seconds": stages.seconds}
    try:
        with stages("read"):
            bgr = cv2.imread(spec["image"], cv2.IMREAD_COLOR)
        if bgr is None:
            raise FileNotFoundError(f"OpenCV cannot read {spec['image']}")
        segmask, result["masks"] = make_masks(spec, bgr, stages)
        with stages("groups"):
            labels, result["groups"] = upstream_labels(segmask)
        deblur(spec, bgr, labels, stages)
    except (MemoryError, RuntimeError) as exc:
        if not is_out_of_memory(exc):
            raise
        result.update(status="oom", stage=stages.current, error=str(exc).splitlines()[0][:300])
    return result


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure (host allocator, address-space cap or CUDA)."""
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(exc)
    return "can't allocate memory" in text or "out of memory" in text.lower()


def main(argv: list[str] | None = None) -> int:
    """``SPEC.json RESULT.json``: cap the address space, run, write the result; exit 0."""
    spec_path, result_path = (argv if argv is not None else sys.argv[1:])[:2]
    spec = json.loads(Path(spec_path).read_text())
    cap = int(spec.get("memory_cap_bytes") or 0)
    if cap:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    if spec["sam_arch"] == TINY_ARCH:
        register_tiny_arch()
    torch.set_grad_enabled(False)
    result = run(spec)
    Path(result_path).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
