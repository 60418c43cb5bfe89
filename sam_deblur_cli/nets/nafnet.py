"""NAFNet (upstream.md section 2) and its CAT variant (section 3), inference only.

Parameter names follow upstream exactly (``intro``, ``encoders.0.0.norm1.weight``, ``downs.0``,
``middle_blks``, ``ups.0.0``, ``decoders``, ``ending``) so a published state dict loads with
``strict=True``. Features run in the channels_last memory format by default: the per-pixel
LayerNorm is then one fused pass and the 1x1 / depthwise convolutions are faster on the CPU
and in reduced precision on GPUs. ``NAFNet.memory_format`` switches a network to contiguous
NCHW (upstream's layout, and its LayerNorm arithmetic), which strict float32 on CUDA prefers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sam_deblur_cli.nets.config import GuideKind


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels at each pixel of N x C x H x W; eps 1e-6, per-channel affine."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        if x.is_contiguous(memory_format=torch.channels_last):
            # both permutes are free views, so this is a single read and a single write of
            # the map instead of upstream's five elementwise passes
            nhwc = F.layer_norm(
                x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps
            )
            return nhwc.permute(0, 3, 1, 2)
        # NCHW: upstream's arithmetic (a layer_norm over a strided channel axis is slower)
        mu = x.mean(1, keepdim=True)
        var = (x - mu).pow(2).mean(1, keepdim=True)
        y = (x - mu) / (var + self.eps).sqrt()
        return self.weight.view(1, -1, 1, 1) * y + self.bias.view(1, -1, 1, 1)


def simple_gate(x: Tensor) -> Tensor:
    """Split the channels in two halves and multiply them (2c -> c)."""
    first, second = x.chunk(2, dim=1)
    return first * second


class NAFBlock(nn.Module):
    """NAFNet block at ``c`` channels, DW_Expand = FFN_Expand = 2; dropout is identity at inference.

    ``sca[0]`` is the channel-attention mean pool: global here, swapped for a local one by
    ``sam_deblur_cli.nets.tlc.set_tlc``.
    """

    def __init__(self, c: int) -> None:
        super().__init__()
        self.norm1 = LayerNorm2d(c)
        self.conv1 = nn.Conv2d(c, 2 * c, 1)
        self.conv2 = nn.Conv2d(2 * c, 2 * c, 3, padding=1, groups=2 * c)
        self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, c, 1))
        self.conv3 = nn.Conv2d(c, c, 1)
        self.norm2 = LayerNorm2d(c)
        self.conv4 = nn.Conv2d(c, 2 * c, 1)
        self.conv5 = nn.Conv2d(c, c, 1)
        # Upstream starts both at zero (the block is the identity until trained).
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))

    def forward(self, inp: Tensor) -> Tensor:
        x = simple_gate(self.conv2(self.conv1(self.norm1(inp))))
        x = self.conv3(x * self.sca(x))
        y = torch.addcmul(inp, x, self.beta)
        x = self.conv5(simple_gate(self.conv4(self.norm2(y))))
        return torch.addcmul(y, x, self.gamma)


def pad_to_multiple(x: Tensor, multiple: int, value: float = 0.0) -> Tensor:
    """Pad the last two axes on the right and bottom up to a multiple of ``multiple``."""
    h, w = x.shape[-2:]
    pad_h, pad_w = -h % multiple, -w % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    if x.dim() == 3:  # label maps: constant padding needs a channel axis
        return F.pad(x[:, None], (0, pad_w, 0, pad_h), value=value)[:, 0]
    return F.pad(x, (0, pad_w, 0, pad_h), value=value)


class NAFNet(nn.Module):
    """Plain NAFNet: ``forward(image) -> restored``, both N x 3 x H x W RGB (output not clamped)."""

    guide_kind: ClassVar[GuideKind] = "none"
    # The features' layout (torch.channels_last or torch.contiguous_format); see
    # restore.memory_format_for for which one a run gets.
    memory_format: torch.memory_format = torch.channels_last

    def __init__(
        self,
        *,
        width: int = 32,
        enc_blk_nums: Sequence[int] = (1, 1, 1, 28),
        middle_blk_num: int = 1,
        dec_blk_nums: Sequence[int] = (1, 1, 1, 1),
        img_channel: int = 3,
        extra_channels: int = 0,
    ) -> None:
        super().__init__()
        self.img_channel = img_channel
        self.intro = nn.Conv2d(img_channel + extra_channels, width, 3, padding=1)
        self.encoders = nn.ModuleList()
        self.downs = nn.ModuleList()
        chan = width
        for num in enc_blk_nums:
            self.encoders.append(nn.Sequential(*(NAFBlock(chan) for _ in range(num))))
            self.downs.append(nn.Conv2d(chan, 2 * chan, 2, stride=2))
            chan *= 2
        self.middle_blks = nn.Sequential(*(NAFBlock(chan) for _ in range(middle_blk_num)))
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for num in dec_blk_nums:
            up = nn.Sequential(nn.Conv2d(chan, 2 * chan, 1, bias=False), nn.PixelShuffle(2))
            self.ups.append(up)
            chan //= 2
            self.decoders.append(nn.Sequential(*(NAFBlock(chan) for _ in range(num))))
        self.ending = nn.Conv2d(width, img_channel, 3, padding=1)
        self.pad_multiple = 2 ** len(self.encoders)

    def forward_features(self, x_in: Tensor) -> Tensor:
        """Run the U-Net on an already padded (Hp, Wp multiples of ``pad_multiple``) input.

        ``x_in`` is N x (3 + extra) x Hp x Wp with the RGB image first; returns N x 3 x Hp x Wp
        (the global residual adds the image channels only).
        """
        x = self.intro(x_in.contiguous(memory_format=self.memory_format))
        skips = []
        for encoder, down in zip(self.encoders, self.downs, strict=True):
            x = encoder(x)
            skips.append(x)
            x = down(x)
        x = self.middle_blks(x)
        for decoder, up in zip(self.decoders, self.ups, strict=True):
            x = decoder(up(x) + skips.pop())  # pop: each skip is freed once used
        return self.ending(x) + x_in[:, : self.img_channel]

    def forward(self, image: Tensor, guide: Tensor | None = None) -> Tensor:
        """``image``: N x 3 x H x W float RGB in [0, 1]; a plain NAFNet takes no guide."""
        if guide is not None:
            raise ValueError("This model uses no masks; run it without a mask (guide=None).")
        h, w = image.shape[-2:]
        return self.forward_features(pad_to_multiple(image, self.pad_multiple))[..., :h, :w]


class CatNAFNet(NAFNet):
    """CAT (MaskNAFNet): the segmask is a 4th input channel.

    ``guide``: N x 1 x H x W float, the uint8 segmask of upstream.md 5.3 divided by 255.
    """

    guide_kind: ClassVar[GuideKind] = "segmask"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(extra_channels=1, **kwargs)

    def forward(self, image: Tensor, guide: Tensor | None = None) -> Tensor:
        if guide is None or guide.dim() != 4 or guide.shape[1] != 1:
            raise ValueError("This model needs a segmask guide of shape N x 1 x H x W; pass one.")
        if guide.shape[-2:] != image.shape[-2:] or guide.shape[0] != image.shape[0]:
            raise ValueError("The segmask and the image differ in size; make masks for this image.")
        h, w = image.shape[-2:]
        x_in = pad_to_multiple(torch.cat([image, guide.to(image.dtype)], dim=1), self.pad_multiple)
        return self.forward_features(x_in)[..., :h, :w]
