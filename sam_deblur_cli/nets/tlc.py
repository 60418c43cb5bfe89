"""TLC, the test-time local converter (upstream.md section 6).

Every channel-attention mean pool becomes a local mean whose window is fixed once from a
256 x 256 dummy run: 1.5 x the training crop measured at that pool's level.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sam_deblur_cli.nets.nafnet import NAFBlock

TRAIN_SIZE = 256
BASE_SIZE = 384  # int(1.5 * TRAIN_SIZE)


def local_mean(x: Tensor, kernel: tuple[int, int]) -> Tensor:
    """Upstream's local AvgPool2d on N x C x H x W: the mean over each kernel window.

    A kernel covering the whole map in both axes is the global mean (N x C x 1 x 1).
    Otherwise the (H-k1+1) x (W-k2+1) valid window means are replicate-padded back to
    H x W, left/top taking the smaller half. Sums run in float32 even for half inputs.
    """
    h, w = x.shape[-2:]
    if kernel[0] >= h and kernel[1] >= w:
        return x.mean(dim=(-2, -1), keepdim=True)
    k1, k2 = min(h, kernel[0]), min(w, kernel[1])
    sums = _window_sums(_window_sums(x.float(), k2, dim=-1), k1, dim=-2)
    out = (sums / (k1 * k2)).to(x.dtype)
    dh, dw = h - out.shape[-2], w - out.shape[-1]
    return F.pad(out, (dw // 2, (dw + 1) // 2, dh // 2, (dh + 1) // 2), mode="replicate")


def _window_sums(x: Tensor, k: int, dim: int) -> Tensor:
    """Sums of every k consecutive entries along ``dim``, from prefix sums.

    Done one axis at a time: the same values as upstream's 2-D prefix sum, but the running
    sums stay a row long instead of a whole map, which keeps float32 rounding small.
    """
    prefix = x.cumsum(dim)
    n = x.shape[dim]
    # window i is prefix[i + k - 1] - prefix[i - 1], with prefix[-1] = 0 for the first one
    out = prefix.narrow(dim, k - 1, n - k + 1).clone()
    out.narrow(dim, 1, n - k).sub_(prefix.narrow(dim, 0, n - k))
    return out


class LocalAvgPool2d(nn.Module):
    """Drop-in for ``AdaptiveAvgPool2d(1)`` in the channel attention; no parameters."""

    def __init__(self, kernel: tuple[int, int]) -> None:
        super().__init__()
        self.kernel = kernel

    def forward(self, x: Tensor) -> Tensor:
        return local_mean(x, self.kernel)

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}"


def set_tlc(net: nn.Module, enabled: bool) -> None:
    """Switch every channel-attention pool of ``net`` to local (TLC) or global mean, in place."""
    blocks = [m for m in net.modules() if isinstance(m, NAFBlock)]
    if not enabled:
        for block in blocks:
            block.sca[0] = nn.AdaptiveAvgPool2d(1)
        return
    sizes = _pool_input_sizes(net, blocks)
    for block in blocks:
        h, w = sizes[id(block.sca)]
        block.sca[0] = LocalAvgPool2d((h * BASE_SIZE // TRAIN_SIZE, w * BASE_SIZE // TRAIN_SIZE))


def _pool_input_sizes(net: nn.Module, blocks: list[NAFBlock]) -> dict[int, tuple[int, int]]:
    """Feature-map size each block's pool sees when ``net`` runs on a 256 x 256 input."""
    sizes: dict[int, tuple[int, int]] = {}

    def record(module: nn.Module, args: tuple[Tensor, ...]) -> None:
        sizes[id(module)] = (args[0].shape[-2], args[0].shape[-1])

    hooks = [block.sca.register_forward_pre_hook(record) for block in blocks]
    param = next(net.parameters())
    image = torch.zeros(1, 3, TRAIN_SIZE, TRAIN_SIZE, dtype=param.dtype, device=param.device)
    guide_kind = getattr(net, "guide_kind", "none")
    guide: Tensor | None = None
    if guide_kind == "segmask":
        guide = torch.zeros_like(image[:, :1])
    elif guide_kind == "labels":  # the masks do not affect the kernels
        guide = torch.zeros(1, TRAIN_SIZE, TRAIN_SIZE, dtype=torch.long, device=param.device)
    try:
        with torch.inference_mode():
            net(image, guide)
    finally:
        for hook in hooks:
            hook.remove()
    return sizes
