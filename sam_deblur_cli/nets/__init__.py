"""The SAM-Deblur networks (upstream.md sections 2-4, 6): pure torch, no files, no network.

Importing this package stays cheap (no torch): ``NetConfig`` and the other plain data live
in :mod:`.config` (re-exported here) and ``build_network`` imports the modules that need
torch when it is called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sam_deblur_cli.nets.config import (
    GUIDE_KINDS,
    MASK_VALUE_UPSTREAM,
    VARIANTS,
    GuideKind,
    NetConfig,
    Variant,
    format_mask_value,
    parse_mask_value,
)

if TYPE_CHECKING:
    import torch

__all__ = [
    "GUIDE_KINDS",
    "MASK_VALUE_UPSTREAM",
    "VARIANTS",
    "GuideKind",
    "NetConfig",
    "Variant",
    "build_network",
    "format_mask_value",
    "parse_mask_value",
]


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
        net = SegNAFNet(seg_channel=cfg.seg_channel, mask_value=cfg.mask_value, **common)
    else:
        net = (CatNAFNet if cfg.variant == "cat" else NAFNet)(**common)
    return net.eval()
