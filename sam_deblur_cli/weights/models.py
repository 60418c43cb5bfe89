"""Build and strictly load the network of any manifest entry: a deblurring network or a SAM.

The one place that turns an :class:`Entry` into a ``torch.nn.Module``: a deblur entry's
``NetConfig`` goes to ``nets.build_network``, a SAM entry's ``arch`` to segment_anything's
``sam_model_registry`` with ``checkpoint=None`` (its builders would ``torch.load`` the file
unsafely). Weights are read by ``checkpoints.read_state_dict`` (``weights_only``: pickled
code is refused, never run) and loaded with every key and shape matching.

torch, the networks and segment_anything are imported inside the functions.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from sam_deblur_cli.errors import SetupError

if TYPE_CHECKING:
    import torch

    from sam_deblur_cli.nets import NetConfig
    from sam_deblur_cli.weights.manifest import Entry


def sam_builder(entry: Entry) -> Callable[..., torch.nn.Module]:
    """segment_anything's builder for a SAM entry's ``arch``.

    Raises ``SetupError`` when segment_anything has no such architecture (call it before a
    download to fail early).
    """
    from segment_anything import sam_model_registry

    if entry.arch not in sam_model_registry:
        known = ", ".join(sorted(sam_model_registry))
        raise SetupError(
            f"{entry.name} names the SAM architecture {entry.arch!r}, which segment_anything "
            f"does not have; fix the manifest to use one of {known}."
        )
    builder: Callable[..., torch.nn.Module] = sam_model_registry[entry.arch]
    return builder


def build(entry: Entry, *, config: NetConfig | None = None) -> torch.nn.Module:
    """``entry``'s architecture with initial weights, in eval mode, float32, on the CPU.

    (Inside a ``torch.device`` context it lands on that device instead.) ``config`` replaces a
    deblur entry's network, e.g. with a run's mask value; SAM entries take none.
    """
    if entry.kind == "sam":
        if config is not None:
            raise ValueError(f"{entry.name} is a SAM entry; a network config does not apply.")
        return sam_builder(entry)(checkpoint=None).eval()
    return build_net(config if config is not None else entry.net_config())


def build_net(config: NetConfig) -> torch.nn.Module:
    """A deblurring network of ``config`` with initial weights, eval mode, float32, CPU
    (what ``train`` starts from, before any entry exists)."""
    from sam_deblur_cli.nets import build_network

    return build_network(config)


def load(entry: Entry, path: Path, *, config: NetConfig | None = None) -> torch.nn.Module:
    """``build(entry, config=config)`` with the checkpoint at ``path`` loaded strictly.

    Raises ``CheckpointError`` for an unreadable or unsafe file, or one that does not fit.
    """
    from sam_deblur_cli.checkpoints import load_strict, read_state_dict

    module = build(entry, config=config)
    load_strict(module, read_state_dict(path))
    return module


def check(entry: Entry, path: Path) -> None:
    """Raise ``CheckpointError`` unless ``path`` loads strictly into ``entry``'s architecture.

    Only shapes are compared: the network is built on the meta device, so even ViT-H costs
    no memory.
    """
    import torch

    from sam_deblur_cli.checkpoints import load_strict, read_state_dict

    state = read_state_dict(path)
    with torch.device("meta"):
        skeleton = build(entry)
    with warnings.catch_warnings():
        # Loading into meta parameters is the point (shapes only); torch warns once per key.
        warnings.filterwarnings("ignore", message=".*non-meta parameter.*meta parameter")
        load_strict(skeleton, state)
