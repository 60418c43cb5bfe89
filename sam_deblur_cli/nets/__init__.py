"""The SAM-Deblur networks (upstream.md sections 2-4, 6): pure torch, no files, no network.

Importing this package stays cheap (no torch): ``NetConfig`` is plain data and
``build_network`` imports the modules that need torch when it is called.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch

Variant = Literal["plain", "cat", "map"]
VARIANTS: tuple[Variant, ...] = ("plain", "cat", "map")


@dataclass(frozen=True)
class NetConfig:
    """Architecture arguments of one network; the published checkpoints use the defaults."""

    variant: Variant = "map"
    width: int = 32
    enc_blk_nums: tuple[int, ...] = (1, 1, 1, 28)
    middle_blk_num: int = 1
    dec_blk_nums: tuple[int, ...] = (1, 1, 1, 1)
    img_channel: int = 3
    seg_channel: int = 2  # map only


def build_network(cfg: NetConfig) -> torch.nn.Module:
    """Build the network ``cfg`` describes, in eval() mode, float32, on the CPU.

    Weights are the default initialisation; load a checkpoint with
    ``sam_deblur_cli.checkpoints.load_strict``.
    """
    if cfg.variant not in VARIANTS:
        raise ValueError(f"Unknown network variant {cfg.variant!r}; use one of {VARIANTS}.")
    if len(cfg.enc_blk_nums) != len(cfg.dec_blk_nums):
        raise ValueError("enc_blk_nums and dec_blk_nums need the same number of levels.")
    from sam_deblur_cli.nets.map import SegNAFNet
    from sam_deblur_cli.nets.nafnet import CatNAFNet, NAFNet

    common: dict[str, Any] = {
        "width": cfg.width,
        "enc_blk_nums": cfg.enc_blk_nums,
        "middle_blk_num": cfg.middle_blk_num,
        "dec_blk_nums": cfg.dec_blk_nums,
        "img_channel": cfg.img_channel,
    }
    net: torch.nn.Module
    if cfg.variant == "map":
        net = SegNAFNet(seg_channel=cfg.seg_channel, **common)
    else:
        net = (CatNAFNet if cfg.variant == "cat" else NAFNet)(**common)
    return net.eval()
