"""SegNAFNet: NAFNet with the Mask Average Pooling unit (upstream.md section 4), inference only.

The group means are a label-map segment mean, O(H*W*C) time and O(H*W + G*C) memory,
instead of upstream's M x H x W x C broadcast; the values agree up to summation order.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from sam_deblur_cli.errors import UsageError
from sam_deblur_cli.nets.nafnet import GuideKind, NAFNet, pad_to_multiple

UNCOVERED = -1  # label of pixels in no group: in practice the zero padding
EPS = 1e-8  # upstream's sum / (count + eps)
_CHUNK = 1 << 22  # pixels accumulated per float64 pass: bounds the temporary copy


def segment_mean(values: Tensor, labels: Tensor) -> Tensor:
    """Replace every pixel of ``values`` by the mean of its group, per channel.

    ``values``: N x C x H x W float. ``labels``: N x H x W int64, groups 0..G-1, -1 for
    uncovered pixels (they share one pool, like upstream's leftover mask). Each mean is
    sum / (count + 1e-8), accumulated in float64 (float32 on MPS) so that large groups do
    not lose precision; empty groups are harmless. Returns N x C x H x W in the dtype of
    ``values``.
    """
    n, c, h, w = values.shape
    bins = int(labels.max()) + 2  # bin 0 holds the uncovered pixels
    offsets = torch.arange(n, device=labels.device)[:, None] * bins
    index = (labels.reshape(n, h * w) + (1 + offsets)).reshape(-1)
    flat = values.transpose(0, 1).reshape(c, n * h * w)  # a view when N == 1 and NCHW
    acc_dtype = torch.float32 if values.device.type == "mps" else torch.float64
    sums = torch.zeros(c, n * bins, dtype=acc_dtype, device=values.device)
    for start in range(0, index.numel(), _CHUNK):
        part = slice(start, start + _CHUNK)
        sums.index_add_(1, index[part], flat[:, part].to(acc_dtype))
    counts = torch.bincount(index, minlength=n * bins).to(acc_dtype)
    means = (sums / (counts + EPS)).to(values.dtype)
    out = means.index_select(1, index)
    return out.reshape(c, n, h, w).transpose(0, 1)


class SegNAFNet(NAFNet):
    """NAFNet whose input is the image plus ``seg_channel`` group-averaged feature channels.

    ``forward(image, labels)``: image N x 3 x H x W RGB [0, 1]; labels N x H x W int64, groups
    0..G-1 (upstream.md 5.4). ``mask_average`` and ``forward_features`` are the two halves,
    so a caller can average over the whole image and then run the U-Net in tiles.
    """

    guide_kind: ClassVar[GuideKind] = "labels"

    def __init__(self, *, seg_channel: int = 2, img_channel: int = 3, **kwargs: Any) -> None:
        super().__init__(img_channel=img_channel, extra_channels=seg_channel, **kwargs)
        self.pre_seg = nn.Conv2d(img_channel, seg_channel, 3, padding=1)
        self.pre_seg_in = nn.Conv2d(seg_channel, seg_channel, 1)

    def mask_average(self, image_padded: Tensor, labels_padded: Tensor) -> Tensor:
        """N x 3 x Hp x Wp padded image, N x Hp x Wp labels (-1 = padding) -> N x seg x Hp x Wp."""
        seg = self.pre_seg_in(self.pre_seg(image_padded))
        return segment_mean(seg, labels_padded)

    def forward(self, image: Tensor, guide: Tensor | None = None) -> Tensor:
        labels = check_labels(image, guide)
        h, w = image.shape[-2:]
        image_p = pad_to_multiple(image, self.pad_multiple)
        # Upstream averages the seg features of the padded image; the padding is "uncovered".
        labels_p = pad_to_multiple(labels, self.pad_multiple, value=UNCOVERED)
        seg = self.mask_average(image_p, labels_p)
        x_in = torch.cat([image_p, seg.to(image_p.dtype)], dim=1)
        return self.forward_features(x_in)[..., :h, :w]


def check_labels(image: Tensor, guide: Tensor | None) -> Tensor:
    """Validate a label-map guide for ``image`` and return it as int64."""
    if guide is None:
        raise UsageError(
            "This model needs SAM masks (a label map); pass masks or pick a model without SAM."
        )
    if guide.dtype.is_floating_point or guide.dtype == torch.bool:
        raise UsageError("The label map must hold integer group indices 0..G-1; convert it.")
    if guide.shape != (image.shape[0], *image.shape[-2:]):
        raise UsageError(
            f"The label map is {tuple(guide.shape)} but the image needs N x H x W = "
            f"{(image.shape[0], *image.shape[-2:])}; make masks for this image."
        )
    return guide.long()
