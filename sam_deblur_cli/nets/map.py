"""SegNAFNet: NAFNet with the Mask Average Pooling unit (upstream.md section 4).

Upstream multiplies an M x H x W mask stack (values ``mask_value``, 1/255 for the
published checkpoints) into an M x H x W x C broadcast. The same numbers come from a
label map: per-group sums and counts (O(H*W*C) time, O(H*W + G*C) memory), a tiny
per-group table built from them, and one gather back to the pixels.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from sam_deblur_cli.nets.config import MASK_VALUE_UPSTREAM, GuideKind
from sam_deblur_cli.nets.nafnet import NAFNet, pad_to_multiple

UNCOVERED = -1  # label of pixels in no group: the zero padding (or a gap in an npz's groups)
EPS = 1e-8  # upstream's eps, in both denominators
_CHUNK = 1 << 22  # pixels accumulated per float64 pass: bounds the temporary copy


def mask_average(
    values: Tensor,
    labels: Tensor,
    *,
    mask_value: float = MASK_VALUE_UPSTREAM,
    dropped: Tensor | None = None,
) -> Tensor:
    """Upstream's ``mask_average`` of ``values`` for masks of value ``mask_value`` (a).

    ``values``: N x C x H x W float. ``labels``: N x H x W int64, groups 0..G-1, -1 for pixels
    in no group (padding). ``dropped``: optional N x G bool, groups whose masks are zeroed
    (mask dropout). Per sample and channel, with S and N the sum and pixel count:
    G_g = a*S_g / (a*N_g + eps); R = (sum of w*s) / (sum of w + eps) with weight w = 1 - a on
    pixels of kept groups and 1 elsewhere; out = a*G_g + (1 - a)*R on kept groups, R
    elsewhere. a = 1 gives every pixel its group mean. Sums run in float64 (float32 on MPS).
    Returns N x C x H x W in the dtype of ``values``.
    """
    n, c, h, w = values.shape
    bins = int(labels.max()) + 2  # bin 0 holds the pixels in no group
    offsets = torch.arange(n, device=labels.device)[:, None] * bins
    index = (labels.reshape(n, h * w) + (1 + offsets)).reshape(-1)
    flat = values.transpose(0, 1).reshape(c, n * h * w)  # a view when N == 1 and NCHW
    acc_dtype = torch.float32 if values.device.type == "mps" else torch.float64
    sums = torch.zeros(c, n * bins, dtype=acc_dtype, device=values.device)
    for start in range(0, index.numel(), _CHUNK):
        part = slice(start, start + _CHUNK)
        sums = sums.index_add(1, index[part], flat[:, part].to(acc_dtype))
    counts = torch.bincount(index, minlength=n * bins).to(acc_dtype).view(n, bins)
    table = _pooled_table(sums.view(c, n, bins), counts, _kept(n, bins, dropped), mask_value)
    out = table.reshape(c, n * bins).to(values.dtype).index_select(1, index)
    return out.reshape(c, n, h, w).transpose(0, 1)


def _kept(n: int, bins: int, dropped: Tensor | None) -> Tensor:
    """N x bins bool: which bins are masks the network sees (bin 0, no group, never is)."""
    kept = torch.ones(n, bins, dtype=torch.bool)
    kept[:, 0] = False
    if dropped is not None:
        if dropped.shape != (n, bins - 1):
            raise ValueError(f"dropped must be N x G = {(n, bins - 1)}, got {tuple(dropped.shape)}")
        kept[:, 1:] &= ~dropped.cpu()
    return kept


def _pooled_table(sums: Tensor, counts: Tensor, kept: Tensor, mask_value: float) -> Tensor:
    """C x N x bins output value of every bin, from its sums (C x N x bins) and counts."""
    # a and 1 - a as upstream's float32 tensors hold them
    a32 = torch.tensor(mask_value, dtype=torch.float32)
    a, rest = float(a32), float(1 - a32)
    kept = kept.to(sums.device)
    weight = torch.where(kept, rest, 1.0).to(sums.dtype)  # each bin's pixel weight in R
    r = (sums * weight).sum(-1) / ((counts * weight).sum(-1) + EPS)  # C x N
    group = (a * sums) / (a * counts + EPS)
    return torch.where(kept, a * group + rest * r[..., None], r[..., None])


def sample_dropped(labels: Tensor, p: float, generator: torch.Generator | None = None) -> Tensor:
    """Mask dropout: N x G bool choosing, per sample, exactly floor(p * M) of its M non-empty
    groups uniformly at random (torch's CPU generator, so training runs can be replayed).

    ``labels``: N x H x W int64 as for :func:`mask_average`.
    """
    n = labels.shape[0]
    groups = int(labels.max()) + 1
    flat = labels.reshape(n, -1)
    offsets = torch.arange(n, device=labels.device)[:, None] * (groups + 1)
    counts = torch.bincount((flat + 1 + offsets).reshape(-1), minlength=n * (groups + 1))
    present = counts.view(n, groups + 1)[:, 1:].cpu() > 0
    dropped = torch.zeros(n, groups, dtype=torch.bool)
    for i in range(n):
        ids = present[i].nonzero()[:, 0]
        k = int(p * ids.numel())  # floor for p >= 0
        if k:
            dropped[i, ids[torch.randperm(ids.numel(), generator=generator)[:k]]] = True
    return dropped.to(labels.device)


class SegNAFNet(NAFNet):
    """NAFNet whose input is the image plus ``seg_channel`` group-averaged feature channels.

    ``forward(image, labels)``: image N x 3 x H x W RGB [0, 1]; labels N x H x W int64, groups
    0..G-1 (upstream.md 5.4). ``mask_value`` is the value the masks had in training (a
    property of the checkpoint); ``mask_dropout`` p zeroes floor(p * M) groups per sample
    in training mode only. ``mask_average`` and ``forward_features`` are the two halves, so
    a caller can average over the whole image and then run the U-Net in tiles.
    """

    guide_kind: ClassVar[GuideKind] = "labels"

    def __init__(
        self,
        *,
        seg_channel: int = 2,
        img_channel: int = 3,
        mask_value: float = MASK_VALUE_UPSTREAM,
        mask_dropout: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(img_channel=img_channel, extra_channels=seg_channel, **kwargs)
        if not 0.0 <= mask_dropout < 1.0:
            raise ValueError(f"mask_dropout must be in [0, 1), got {mask_dropout}")
        self.mask_value = mask_value
        self.mask_dropout = mask_dropout
        self.pre_seg = nn.Conv2d(img_channel, seg_channel, 3, padding=1)
        self.pre_seg_in = nn.Conv2d(seg_channel, seg_channel, 1)

    def mask_average(self, image_padded: Tensor, labels_padded: Tensor) -> Tensor:
        """N x 3 x Hp x Wp padded image, N x Hp x Wp labels (-1 = padding) -> N x seg x Hp x Wp."""
        seg = self.pre_seg_in(self.pre_seg(image_padded))
        dropped = None
        if self.training and self.mask_dropout > 0:
            dropped = sample_dropped(labels_padded, self.mask_dropout)
        return mask_average(seg, labels_padded, mask_value=self.mask_value, dropped=dropped)

    def forward(self, image: Tensor, guide: Tensor | None = None) -> Tensor:
        labels = check_labels(image, guide)
        h, w = image.shape[-2:]
        image_p = pad_to_multiple(image, self.pad_multiple)
        # Upstream averages the seg features of the padded image; the padding is in no group.
        labels_p = pad_to_multiple(labels, self.pad_multiple, value=UNCOVERED)
        seg = self.mask_average(image_p, labels_p)
        x_in = torch.cat([image_p, seg.to(image_p.dtype)], dim=1)
        return self.forward_features(x_in)[..., :h, :w]


def check_labels(image: Tensor, guide: Tensor | None) -> Tensor:
    """The label-map guide for ``image`` as int64; ValueError if it cannot be one.

    A caller bug, not a user error: ``restore`` checks masks from users first.
    """
    if guide is None:
        raise ValueError(
            "This model needs SAM masks (a label map); pass masks or pick a model without SAM."
        )
    if guide.dtype.is_floating_point or guide.dtype == torch.bool:
        raise ValueError("The label map must hold integer group indices 0..G-1; convert it.")
    if guide.shape != (image.shape[0], *image.shape[-2:]):
        raise ValueError(
            f"The label map is {tuple(guide.shape)} but the image needs N x H x W = "
            f"{(image.shape[0], *image.shape[-2:])}; make masks for this image."
        )
    return guide.long()
