"""Run a deblurring network on one image (padding, device, precision, tiling, OOM back-off),
or on a batch of same-size images where memory allows (``restore_batch``).

numpy in, numpy out. Import this module lazily from anything the CLI loads at start-up: it
imports torch.

Tiling works in the padded image (both sides multiples of 16) on a grid aligned to 16, so
every tile sees the same down-sampling grid as a whole-image run; overlapping tiles are
blended with a sin^2 ramp. For MAP networks the group means are taken over the whole
padded image first (``net.mask_average``) and only the U-Net (``net.forward_features``)
runs per tile, so every tile sees the true group means.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sam_deblur_cli.errors import DeviceError, TooLargeError, UsageError

if TYPE_CHECKING:
    from sam_deblur_cli.nets import GuideKind
    from sam_deblur_cli.nets.map import SegNAFNet

logger = logging.getLogger(__name__)

Tile = int | Literal["auto"] | None
Progress = Callable[[int, int], None]  # (tiles done, tiles in all)

MIN_TILE = 128  # smallest tile, also the floor of the out-of-memory back-off
DEFAULT_OVERLAP = 128
_ALIGN = 16  # 2 ** number of encoder levels of every published network
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Peak bytes of a whole-image forward per padded pixel, per network width channel, per
# byte of precision. benchmarks/bench_network.py measured 7-8 at 720p and 11-13 at 360p on
# the CPU (width 32); 24 leaves room for allocator slack and cuDNN workspaces.
_PEAK_FACTOR = 24.0
_PEAK_PER_PIXEL = 48  # image, guide, label index and output buffers (bytes per pixel)
_BUDGET_SHARE = 0.8  # of the free memory; the rest is left to the system and other buffers


_OOM: type[Exception] = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


@dataclass(frozen=True)
class Target:
    """Torch device and dtype a restore runs with."""

    device: torch.device
    dtype: torch.dtype


def restore(
    net: nn.Module,
    image: np.ndarray,
    guide: np.ndarray | None = None,
    *,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    tile: Tile = None,
    tile_overlap: int = DEFAULT_OVERLAP,
    progress: Progress | None = None,
    tile_on_oom: bool = True,
    tf32: bool | None = None,
) -> np.ndarray:
    """Deblur ``image`` (H x W x 3 float32 RGB in [0, 1]) with ``net``.

    ``guide``: None for plain networks, the H x W uint8 segmask for CAT, the H x W integer
    label map (groups 0..G-1) for MAP. ``device`` is a resolved device ("cpu", "cuda:1",
    "mps" or a torch.device); ``precision`` fp32, fp16 or bf16. ``tile``: None runs the
    whole image, an int tiles with that size (rounded down to a multiple of 16), "auto"
    tiles only when the estimated peak memory would not fit; ``tile_on_oom`` False turns the
    out-of-memory back-off into a TooLargeError (a run that must not tile). ``tf32``: allow or
    forbid TF32 in CUDA fp32 (None: torch's setting). The network is moved to the device and
    precision in place. Returns H x W x 3 float32 clamped to [0, 1].
    """
    from sam_deblur_cli.devices import tf32_mode

    target = make_target(device, precision)
    h, w = _check_image(image)
    with torch.inference_mode(), tf32_mode(tf32), _layout(net, target, tf32):
        run, hp, wp = _tile_runner(
            net.to(device=target.device, dtype=target.dtype).eval(), [image], [guide], target
        )
        size = _plan(h, w, tile, _net_width(net), target)
        out = _run_with_backoff(run, hp, wp, size, tile_overlap, target, progress, tile_on_oom)
        result = out[0, :, :h, :w].clamp_(0, 1).permute(1, 2, 0)
    return np.ascontiguousarray(result.numpy(), dtype=np.float32)


def memory_format_for(target: Target, tf32: bool | None) -> torch.memory_format:
    """The features' layout for a run: contiguous NCHW for strict float32 on CUDA (``tf32``
    False: cuDNN's IEEE kernels run NCHW faster than channels_last), else channels_last."""
    strict = target.device.type == "cuda" and target.dtype == torch.float32 and tf32 is False
    return torch.contiguous_format if strict else torch.channels_last


@contextlib.contextmanager
def _layout(net: nn.Module, target: Target, tf32: bool | None) -> Iterator[None]:
    """Run ``net`` (a NAFNet; other modules are left alone) in :func:`memory_format_for`."""
    if not hasattr(net, "memory_format"):
        yield
        return
    nafnet = cast(Any, net)
    saved = vars(nafnet).get("memory_format")
    nafnet.memory_format = memory_format_for(target, tf32)
    try:
        yield
    finally:
        if saved is None:
            del nafnet.memory_format  # back to the class default
        else:
            nafnet.memory_format = saved


MAX_AUTO_BATCH = 8  # the most images batch_capacity ever suggests


def restore_batch(
    net: nn.Module,
    images: Sequence[np.ndarray],
    guides: Sequence[np.ndarray | None] | None = None,
    *,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    tile: Tile = None,
    tile_on_oom: bool = True,
    tf32: bool | None = None,
) -> list[np.ndarray]:
    """Deblur same-size ``images`` (each H x W x 3 float32 RGB in [0, 1]) in batches.

    ``guides``: None for plain networks, else one guide per image as for :func:`restore`
    (segmasks for CAT, label maps for MAP, each image with its own groups). Whole images
    are stacked as many at a time as the memory estimate allows (``estimate_peak_bytes``
    times the batch against the free memory); images that would not fit in a batch of two,
    a batch that runs out of memory, and every image when ``tile`` is a size, go one at a
    time through :func:`restore` (with ``tile`` and ``tile_on_oom``). Returns one
    H x W x 3 float32 array in [0, 1] per image, in order; the same values as
    :func:`restore` on each image up to float rounding.
    """
    from sam_deblur_cli.devices import tf32_mode

    target = make_target(device, precision)
    images = list(images)
    guide_list: list[np.ndarray | None] = [None] * len(images) if guides is None else list(guides)
    if len(guide_list) != len(images):
        raise UsageError(f"{len(images)} images but {len(guide_list)} masks; pass one per image.")
    if not images:
        return []
    h, w = _check_image(images[0])
    for image in images[1:]:
        if image.shape != images[0].shape:
            raise UsageError(
                f"A batch holds images of one size; got {image.shape} and {images[0].shape}."
            )

    def one(image: np.ndarray, guide: np.ndarray | None) -> np.ndarray:
        return restore(
            net,
            image,
            guide,
            device=target.device,
            precision=precision,
            tile=tile,
            tile_on_oom=tile_on_oom,
            tf32=tf32,
        )

    fits = _capacity(h, w, _net_width(net), target, len(images))
    if isinstance(tile, int) and tile > 0:
        fits = 1
    results: list[np.ndarray] = []
    for start in range(0, len(images), fits):
        chunk = images[start : start + fits]
        chunk_guides = guide_list[start : start + fits]
        if len(chunk) == 1:
            results.append(one(chunk[0], chunk_guides[0]))
            continue
        try:
            with torch.inference_mode(), tf32_mode(tf32), _layout(net, target, tf32):
                ready = net.to(device=target.device, dtype=target.dtype).eval()
                run, _hp, _wp = _tile_runner(ready, chunk, chunk_guides, target)
                out = run(slice(None), slice(None)).float().cpu()
                out = out[:, :, :h, :w].clamp_(0, 1).permute(0, 2, 3, 1)
                results.extend(np.ascontiguousarray(o.numpy(), dtype=np.float32) for o in out)
        except _OOM:
            if target.device.type == "cuda":
                torch.cuda.empty_cache()
            logger.warning(
                "Out of memory on %s with a batch of %d: one image at a time",
                target.device,
                len(chunk),
            )
            results.extend(one(i, g) for i, g in zip(chunk, chunk_guides, strict=True))
    return results


def batch_capacity(
    height: int,
    width: int,
    *,
    net_width: int = 32,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    limit: int = MAX_AUTO_BATCH,
) -> int:
    """How many whole H x W images fit in one batch now (1 to ``limit``), by the estimate."""
    return _capacity(height, width, net_width, make_target(device, precision), limit)


def _capacity(height: int, width: int, net_width: int, target: Target, limit: int) -> int:
    precision = next(k for k, v in _DTYPES.items() if v == target.dtype)
    peak = estimate_peak_bytes(height, width, net_width=net_width, precision=precision)
    budget = _BUDGET_SHARE * free_memory_bytes(target.device)
    return max(1, min(limit, int(budget // max(peak, 1))))


def make_target(device: str | torch.device, precision: str) -> Target:
    """Check that ``device`` exists and can run ``precision``; UsageError/DeviceError if not."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise UsageError(f"Unknown device {device!r}; use cpu, cuda, cuda:N or mps.") from None
    if precision not in _DTYPES:
        raise UsageError(f"Unknown precision {precision!r}; use fp32, fp16 or bf16.")
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (dev.index or 0) >= count:
            raise DeviceError(f"{dev} is not available ({count} CUDA GPUs); use another device.")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise DeviceError("Apple MPS is not available here; use the CPU or a CUDA GPU.")
    elif dev.type != "cpu":
        raise UsageError(f"Device {dev} is not supported; use cpu, cuda, cuda:N or mps.")
    if dev.type == "cpu" and precision == "fp16":
        raise UsageError("fp16 does not run on the CPU; use fp32 (or bf16) there.")
    return Target(dev, _DTYPES[precision])


def _check_image(image: np.ndarray) -> tuple[int, int]:
    if image.ndim != 3 or image.shape[2] != 3:
        raise UsageError(f"Expected an H x W x 3 RGB image, got shape {image.shape}; convert it.")
    return int(image.shape[0]), int(image.shape[1])


def _net_width(net: nn.Module) -> int:
    intro = getattr(net, "intro", None)
    return int(intro.out_channels) if isinstance(intro, nn.Conv2d) else 32


TileRun = Callable[[slice, slice], Tensor]  # padded-space window -> N x 3 x h x w output


def _tile_runner(
    net: nn.Module,
    images: list[np.ndarray],
    guides: list[np.ndarray | None],
    target: Target,
) -> tuple[TileRun, int, int]:
    """A function running ``net`` on any window of the padded, stacked images (all the same
    size, each with its own guide), and the padded size."""
    from sam_deblur_cli.masks import check_guide

    kind: GuideKind = getattr(net, "guide_kind", "none")
    for image, guide in zip(images, guides, strict=True):
        check_guide(kind, guide, image.shape)
    x = torch.cat([_to_tensor(image, target) for image in images])
    hp, wp = x.shape[-2] + (-x.shape[-2] % _ALIGN), x.shape[-1] + (-x.shape[-1] % _ALIGN)
    x = _pad(x, hp, wp, 0.0)
    if kind == "none":
        return (lambda ys, xs: net(x[..., ys, xs])), hp, wp
    present = [g for g in guides if g is not None]  # check_guide: all of them for CAT and MAP
    if kind == "segmask":
        seg = _pad(torch.cat([_segmask_tensor(g, target) for g in present]), hp, wp, 0.0)
        return (lambda ys, xs: net(x[..., ys, xs], seg[..., ys, xs])), hp, wp
    map_net = cast("SegNAFNet", net)
    labels = torch.cat([_labels_tensor(g, target.device) for g in present])
    labels = _pad(labels[:, None], hp, wp, -1)[:, 0]
    # each sample's groups are its own: mask_average pools per sample
    x_in = torch.cat([x, map_net.mask_average(x, labels).to(x.dtype)], dim=1)
    del labels
    return (lambda ys, xs: map_net.forward_features(x_in[..., ys, xs])), hp, wp


def _to_tensor(image: np.ndarray, target: Target) -> Tensor:
    # from_numpy shares memory and warns on read-only arrays (decoded files, cached masks):
    # np.require copies only when the array is not already writable, contiguous float32.
    rgb = torch.from_numpy(np.require(image, np.float32, ("C", "W")))
    return rgb.permute(2, 0, 1)[None].to(device=target.device, dtype=target.dtype)


def _segmask_tensor(guide: np.ndarray, target: Target) -> Tensor:
    seg = torch.from_numpy(np.require(guide, None, ("C", "W")))[None, None]
    return (seg.to(device=target.device, dtype=torch.float32) / 255).to(target.dtype)


def _labels_tensor(guide: np.ndarray, device: torch.device) -> Tensor:
    return torch.from_numpy(np.require(guide, np.int64, ("C", "W")))[None].to(device)


def _pad(x: Tensor, hp: int, wp: int, value: float) -> Tensor:
    """Zero (or ``value``) padding on the right and bottom up to hp x wp, as upstream."""
    return F.pad(x, (0, wp - x.shape[-1], 0, hp - x.shape[-2]), value=value)


def estimate_peak_bytes(
    height: int, width: int, *, net_width: int = 32, precision: str = "fp32"
) -> int:
    """Conservative peak memory of a whole-image forward at ``height`` x ``width``.

    Padding to 16 included; the weights themselves are not counted (they are loaded).
    """
    pixels = (height + (-height % _ALIGN)) * (width + (-width % _ALIGN))
    elem = _DTYPES[precision].itemsize
    return int(pixels * (_PEAK_FACTOR * net_width * elem + _PEAK_PER_PIXEL))


def free_memory_bytes(device: torch.device) -> int:
    """Memory a run on ``device`` may use now.

    CUDA: free memory plus what torch's cache holds unused. CPU and MPS (unified memory):
    MemAvailable from /proc/meminfo, because the OOM killer ends the process instead of
    raising; where that file does not exist, assume plenty.
    """
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + cached)
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 1 << 50


def plan_tile(
    height: int,
    width: int,
    tile: Tile,
    *,
    net_width: int = 32,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
) -> int | None:
    """The tile size ``restore`` starts with for an H x W image (None: the whole image)."""
    return _plan(height, width, tile, net_width, make_target(device, precision))


def _plan(height: int, width: int, tile: Tile, net_width: int, target: Target) -> int | None:
    if tile is None or tile == 0:
        return None
    if tile != "auto":
        if not isinstance(tile, int) or tile < MIN_TILE:
            raise UsageError(
                f"Tile size {tile!r} is too small; use auto, 0 or at least {MIN_TILE}."
            )
        return tile - tile % _ALIGN
    precision = next(k for k, v in _DTYPES.items() if v == target.dtype)
    budget = _BUDGET_SHARE * free_memory_bytes(target.device)
    if estimate_peak_bytes(height, width, net_width=net_width, precision=precision) <= budget:
        logger.info("Whole image fits in memory: no tiling")
        return None
    # buffers of a tiled run: the padded input on the device, float32 accumulators on the CPU
    fixed = height * width * (_PEAK_PER_PIXEL + 16)
    size = max(height, width) + (-max(height, width) % _ALIGN)
    while size > MIN_TILE:
        size -= _ALIGN
        th, tw = min(size, height), min(size, width)
        if fixed + estimate_peak_bytes(th, tw, net_width=net_width, precision=precision) <= budget:
            break
    logger.info("Image too large for free memory (%.1f GB): tiles of %d px", budget / 1e9, size)
    return size


def _run_with_backoff(
    run: TileRun,
    hp: int,
    wp: int,
    size: int | None,
    overlap: int,
    target: Target,
    progress: Progress | None,
    tile_on_oom: bool = True,
) -> Tensor:
    """Run whole or tiled; on out-of-memory halve the tile down to MIN_TILE, then give up
    (at once, with TooLargeError, when ``tile_on_oom`` is False)."""
    while True:
        try:
            if size is None or (size >= hp and size >= wp):
                out = run(slice(None), slice(None)).float().cpu()
                if progress is not None:
                    progress(1, 1)
                return out
            return _run_tiled(run, hp, wp, size, overlap, progress)
        except _OOM:
            if target.device.type == "cuda":
                torch.cuda.empty_cache()
            if not tile_on_oom:
                raise TooLargeError(
                    f"A {wp} x {hp} image (padded) does not fit in memory on {target.device} "
                    "without tiling; tile it (--tile auto or a size) or use a larger device."
                ) from None
            current = size if size is not None else max(hp, wp)
            size = (current // 2) - (current // 2) % _ALIGN
            if size < MIN_TILE:
                raise DeviceError(
                    f"Out of memory on {target.device} even with {MIN_TILE}-pixel tiles; "
                    "free memory, use a lower precision or a smaller image."
                ) from None
            logger.warning("Out of memory on %s: retrying with %d-pixel tiles", target.device, size)


def _run_tiled(
    run: TileRun, hp: int, wp: int, size: int, overlap: int, progress: Progress | None
) -> Tensor:
    """Blend overlapping tiles; the weights are separable, so the normaliser is an outer product."""
    rows = _spans(hp, size, overlap)
    cols = _spans(wp, size, overlap)
    row_weights, col_weights = _ramps(rows), _ramps(cols)
    acc = torch.zeros(1, 3, hp, wp)
    row_norm, col_norm = torch.zeros(hp), torch.zeros(wp)
    for span, weight in zip(rows, row_weights, strict=True):
        row_norm[span] += weight
    for span, weight in zip(cols, col_weights, strict=True):
        col_norm[span] += weight
    total, done = len(rows) * len(cols), 0
    for ys, wy in zip(rows, row_weights, strict=True):
        for xs, wx in zip(cols, col_weights, strict=True):
            out = run(ys, xs).float().cpu()
            acc[..., ys, xs] += out * (wy[:, None] * wx[None, :])
            done += 1
            if progress is not None:
                progress(done, total)
    return acc / (row_norm[:, None] * col_norm[None, :])


def _spans(length: int, size: int, overlap: int) -> list[slice]:
    """Windows of ``size`` covering [0, length), starts aligned to 16, overlaps >= ``overlap``."""
    if size >= length:
        return [slice(0, length)]
    overlap = min(overlap, size // 2)
    count = math.ceil((length - overlap) / (size - overlap))
    step = (length - size) / (count - 1)
    starts = [round(i * step / _ALIGN) * _ALIGN for i in range(count)]
    return [slice(s, s + size) for s in starts]


def _ramps(spans: list[slice]) -> list[Tensor]:
    """Per-window weights: a sin^2 rise over the overlap with the previous window, a fall
    over the overlap with the next one, 1 elsewhere."""
    weights = []
    for i, span in enumerate(spans):
        start, stop = int(span.start), int(span.stop)
        weight = torch.ones(stop - start)
        if i > 0:
            rise = _sin2(int(spans[i - 1].stop) - start)
            weight[: rise.numel()] = rise
        if i + 1 < len(spans):
            fall = _sin2(stop - int(spans[i + 1].start)).flip(0)
            weight[weight.numel() - fall.numel() :] *= fall
        weights.append(weight)
    return weights


def _sin2(n: int) -> Tensor:
    """n weights rising from ~0 to ~1; sin^2 and its mirror sum to 1 across an overlap."""
    return torch.sin((torch.arange(n) + 0.5) / n * (math.pi / 2)) ** 2
