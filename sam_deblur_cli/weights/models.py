"""Build and strictly load the network of any manifest entry: a deblurring network or a SAM.

The one place that turns an :class:`Entry` into a ``torch.nn.Module``: a deblur entry's
``NetConfig`` goes to ``nets.build_network``, a SAM entry's ``arch`` to segment_anything's
``sam_model_registry`` with ``checkpoint=None`` (its builders would ``torch.load`` the file
unsafely). Weights are read by ``checkpoints.read_state_dict`` (``weights_only``: pickled
code is refused, never run) and loaded with every key and shape matching.

``load`` never initialises weights that the checkpoint overwrites: the network is built on
the meta device and the checkpoint's tensors are assigned to it (cast to the network's
dtypes). Non-persistent buffers are not in a checkpoint; they are restored from the
builder: SAM's ``pixel_mean``/``pixel_std`` are made with the legacy ``torch.Tensor(list)``
constructor, which the meta device context does not reach, so they come out real (any
buffer left on the meta device is rebuilt from ``_RESTORED_BUFFERS`` or raises). Our own
networks have no buffers. The result equals the builder's model with the file loaded into
it, tensor for tensor (tests/test_weights_models.py pins it against segment_anything's
builder).

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

    Built on the meta device and assigned the checkpoint's tensors (see the module
    docstring): eval mode, float32, on the CPU, with no time spent on initial weights.
    Raises ``CheckpointError`` for an unreadable or unsafe file, or one that does not fit.
    """
    import torch

    from sam_deblur_cli.checkpoints import load_strict, read_state_dict

    with torch.device("meta"):
        module = build(entry, config=config)
    load_strict(module, read_state_dict(path), assign=True)
    restore_buffers(module)
    return module


# Non-persistent buffers a builder may leave on the meta device, by owner class name and
# buffer name: a function of the owner giving the value on the CPU. segment_anything's
# ``Sam`` normalises with the ImageNet statistics in every builder (``build_sam.py``).
_RESTORED_BUFFERS: dict[tuple[str, str], Callable[[torch.nn.Module], torch.Tensor]] = {
    ("Sam", "pixel_mean"): lambda _: _column([123.675, 116.28, 103.53]),
    ("Sam", "pixel_std"): lambda _: _column([58.395, 57.12, 57.375]),
}


def _column(values: list[float]) -> torch.Tensor:
    import torch

    return torch.tensor(values, dtype=torch.float32).view(-1, 1, 1)


def restore_buffers(module: torch.nn.Module) -> None:
    """Give every buffer still on the meta device its builder's value, in place.

    Raises ``RuntimeError`` (a bug, not a user error) for a meta tensor with no known value.
    """
    for owner in module.modules():
        for name, buffer in list(owner.named_buffers(recurse=False)):
            if buffer is None or not buffer.is_meta:
                continue
            make = _RESTORED_BUFFERS.get((type(owner).__name__, name))
            if make is None:
                raise RuntimeError(f"{type(owner).__name__}.{name} has no value after loading")
            owner.register_buffer(
                name, make(owner), persistent=name not in owner._non_persistent_buffers_set
            )
    left = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"{', '.join(left)} still on the meta device after loading")


def check(entry: Entry, path: Path) -> None:
    """Raise ``CheckpointError`` unless ``path`` loads strictly into ``entry``'s architecture.

    Only shapes are compared: the network is built on the meta device, so even ViT-H costs
    no memory.
    """
    import torch

    from sam_deblur_cli.checkpoints import load_strict, read_state_dict

    state = read_state_dict(path, mmap=True)  # shapes only: the values are never read
    with torch.device("meta"):
        skeleton = build(entry)
    with warnings.catch_warnings():
        # Loading into meta parameters is the point (shapes only); torch warns once per key.
        warnings.filterwarnings("ignore", message=".*non-meta parameter.*meta parameter")
        load_strict(skeleton, state)
