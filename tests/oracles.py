"""Reference implementations written straight from upstream.md, for parity tests only.

Nothing here is fast or clever on purpose: NCHW tensors, explicit mean/variance, the
dense M x H x W x C Mask Average Pooling fed masks of value 1/255 as upstream's loader
fed them, and a python loop over TLC windows. They take a
plain state dict (upstream key names) and share no code with ``sam_deblur_cli.nets``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

Pool = Callable[[Tensor], Tensor]
StateDict = dict[str, Tensor]


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-6) -> Tensor:
    mu = x.mean(1, keepdim=True)
    var = (x - mu).pow(2).mean(1, keepdim=True)
    y = (x - mu) / (var + eps).sqrt()
    return weight.view(1, -1, 1, 1) * y + bias.view(1, -1, 1, 1)


def global_pool(x: Tensor) -> Tensor:
    return F.adaptive_avg_pool2d(x, 1)


def tlc_pool_loop(x: Tensor, kernel: tuple[int, int]) -> Tensor:
    """upstream.md 6, one window at a time."""
    n, c, h, w = x.shape
    if kernel[0] >= h and kernel[1] >= w:
        return F.adaptive_avg_pool2d(x, 1)
    k1, k2 = min(h, kernel[0]), min(w, kernel[1])
    ho, wo = h - k1 + 1, w - k2 + 1
    out = torch.empty(n, c, ho, wo, dtype=x.dtype)
    for i in range(ho):
        for j in range(wo):
            window = x[:, :, i : i + k1, j : j + k2].double()
            out[:, :, i, j] = window.mean(dim=(-2, -1)).to(x.dtype)
    left, top = (w - wo) // 2, (h - ho) // 2
    rows = [min(max(r - top, 0), ho - 1) for r in range(h)]  # replicate padding
    cols = [min(max(q - left, 0), wo - 1) for q in range(w)]
    return out[:, :, rows][:, :, :, cols]


def tlc_kernel(level: int) -> tuple[int, int]:
    """Kernel of a pool at ``level`` (0 = full resolution): its map size at a 256 input * 1.5."""
    size = 256 // 2**level
    return (size * 384 // 256, size * 384 // 256)


def nafblock(sd: StateDict, prefix: str, inp: Tensor, pool: Pool) -> Tensor:
    def p(name: str) -> Tensor:
        return sd[prefix + name]

    c = inp.shape[1]
    x = layer_norm(inp, p("norm1.weight"), p("norm1.bias"))
    x = F.conv2d(x, p("conv1.weight"), p("conv1.bias"))
    x = F.conv2d(x, p("conv2.weight"), p("conv2.bias"), padding=1, groups=2 * c)
    x = x[:, :c] * x[:, c:]
    x = x * F.conv2d(pool(x), p("sca.1.weight"), p("sca.1.bias"))
    x = F.conv2d(x, p("conv3.weight"), p("conv3.bias"))
    y = inp + x * p("beta")
    x = layer_norm(y, p("norm2.weight"), p("norm2.bias"))
    x = F.conv2d(x, p("conv4.weight"), p("conv4.bias"))
    x = x[:, :c] * x[:, c:]
    x = F.conv2d(x, p("conv5.weight"), p("conv5.bias"))
    return y + x * p("gamma")


def _count(sd: StateDict, prefix: str) -> int:
    return len({k[len(prefix) :].split(".")[0] for k in sd if k.startswith(prefix)})


def nafnet_body(sd: StateDict, x_in: Tensor, tlc: bool) -> Tensor:
    """intro ... ending + residual on an already padded input whose first 3 channels are RGB."""
    levels = _count(sd, "encoders.")

    def pool_at(level: int) -> Pool:
        return (lambda t: tlc_pool_loop(t, tlc_kernel(level))) if tlc else global_pool

    def run(group: str, x: Tensor, level: int) -> Tensor:
        for b in range(_count(sd, group + ".")):
            x = nafblock(sd, f"{group}.{b}.", x, pool_at(level))
        return x

    x = F.conv2d(x_in, sd["intro.weight"], sd["intro.bias"], padding=1)
    skips = []
    for i in range(levels):
        x = run(f"encoders.{i}", x, i)
        skips.append(x)
        x = F.conv2d(x, sd[f"downs.{i}.weight"], sd[f"downs.{i}.bias"], stride=2)
    x = run("middle_blks", x, levels)
    for i in range(levels):
        x = F.pixel_shuffle(F.conv2d(x, sd[f"ups.{i}.0.weight"]), 2) + skips[levels - 1 - i]
        x = run(f"decoders.{i}", x, levels - 1 - i)
    x = F.conv2d(x, sd["ending.weight"], sd["ending.bias"], padding=1)
    return x + x_in[:, :3]


def pad16(x: Tensor, value: float = 0.0) -> Tensor:
    h, w = x.shape[-2:]
    return F.pad(x, (0, (16 - w % 16) % 16, 0, (16 - h % 16) % 16), value=value)


def dense_map(
    seg: Tensor, masks: Tensor, scale: float = 255.0, dropped: Sequence[int] = ()
) -> Tensor:
    """Upstream's mask_average by broadcasting (upstream.md 4), fed as its loader fed it.

    seg 1 x C x H x W; masks M x H x W bool (the groups; padding pixels in none), turned
    into float32 and divided by ``scale`` as the loader does (255: masks of value 1/255;
    1: value-1 masks). ``dropped``: groups whose masks mask dropout set to 0.
    """
    feat = seg[0].permute(1, 2, 0)[None]  # 1 x H x W x C
    m = masks[..., None].float() / scale  # M x H x W x 1
    for g in dropped:
        m[g] = 0
    left = 1 - m.sum(0).clamp(0, 1)  # what no mask covers: every pixel feeds it
    m = torch.cat([m, left[None]]).to(seg.dtype)
    means = (m * feat).sum(dim=(1, 2)) / (m.sum(dim=(1, 2)) + 1e-8)  # (M + 1) x C
    out = (m * means[:, None, None, :]).sum(0)  # H x W x C
    return out.permute(2, 0, 1)[None]


def label_masks(labels: Tensor) -> Tensor:
    """M x H x W bool stack of groups 0..max from an H x W label map (-1: in no group)."""
    return torch.stack([labels == g for g in range(int(labels.max()) + 1)])


def forward(
    sd: StateDict,
    variant: str,
    image: Tensor,
    guide: Tensor | None,
    tlc: bool,
    mask_scale: float = 255.0,
) -> Tensor:
    """Full reference forward for one image (N = 1); guide as in the nets contract.

    ``mask_scale``: MAP masks are fed as bool / mask_scale (255 as upstream's loader).
    """
    h, w = image.shape[-2:]
    if variant == "plain":
        x_in = pad16(image)
    elif variant == "cat":
        assert guide is not None
        x_in = pad16(torch.cat([image, guide], 1))
    else:
        assert guide is not None
        img = pad16(image)
        seg = F.conv2d(img, sd["pre_seg.weight"], sd["pre_seg.bias"], padding=1)
        seg = F.conv2d(seg, sd["pre_seg_in.weight"], sd["pre_seg_in.bias"])
        labels = pad16(guide[:, None].double(), value=-1.0)[0, 0]
        x_in = torch.cat([img, dense_map(seg, label_masks(labels), mask_scale)], 1)
    return nafnet_body(sd, x_in, tlc)[..., :h, :w]
