"""The network a run trains, and ``--init``: starting it from a checkpoint.

``--init`` loads the same architecture strictly. A plain NAFNet into a CAT or MAP network
copies every weight the two share and sets the extra input channels of ``intro`` to zero,
so the new network computes exactly the plain one until it is trained: the guide enters
the network only through those channels (CAT: the segmask; MAP: the pooled features of
``pre_seg``/``pre_seg_in``, which keep their fresh initialisation and start learning as
soon as the zero channels move).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from sam_deblur_cli.errors import CheckpointError

if TYPE_CHECKING:
    from torch import Tensor, nn

    from sam_deblur_cli.train.config import TrainConfig

logger = logging.getLogger(__name__)


def build_model(cfg: TrainConfig) -> nn.Module:
    """A freshly initialised network of ``cfg`` in train() mode, float32, on the CPU, with
    the run's mask dropout on its MAP unit (active in train() mode only)."""
    from sam_deblur_cli.weights.models import build_net

    net = build_net(cfg.net)
    if cfg.variant == "map":
        net.mask_dropout = float(cfg.dropout)  # type: ignore[assignment]
    return net.train()


def init_state_dict(source: str) -> dict[str, Tensor]:
    """The state dict ``--init`` names: a checkpoint file, else a model entry of the manifest."""
    from sam_deblur_cli import weights
    from sam_deblur_cli.checkpoints import read_state_dict

    path = Path(source).expanduser()
    if path.is_file():
        return read_state_dict(path)
    manifest = weights.load_manifest()
    entry = manifest.get(source)  # UsageError naming the known models
    entry.net_config()  # UsageError for a SAM entry
    return read_state_dict(weights.ensure_weights(entry))


def load_init(net: nn.Module, state_dict: dict[str, Tensor]) -> str:
    """Load ``state_dict`` into ``net`` (in place); returns "strict" or "from-plain".

    Raises CheckpointError (exit 2) when the checkpoint fits neither way.
    """
    import torch

    from sam_deblur_cli.checkpoints import load_strict

    own = net.state_dict()
    if own.keys() == state_dict.keys() and all(
        own[k].shape == v.shape for k, v in state_dict.items()
    ):
        load_strict(net, state_dict)
        return "strict"
    intro = state_dict.get("intro.weight")
    extra = set(own) - set(state_dict)
    shared_fit = all(
        own[k].shape == v.shape for k, v in state_dict.items() if k != "intro.weight" and k in own
    )
    plain_like = (
        intro is not None
        and set(state_dict) <= set(own)
        and extra <= {"pre_seg.weight", "pre_seg.bias", "pre_seg_in.weight", "pre_seg_in.bias"}
        and intro.shape[1] == 3
        and intro.shape[0] == own["intro.weight"].shape[0]
        and own["intro.weight"].shape[1] > 3
        and shared_fit
    )
    if not plain_like or intro is None:
        try:
            load_strict(net, state_dict)  # raises, with the key-by-key report
        except CheckpointError as exc:
            raise CheckpointError(
                f"--init does not fit this network: {exc} Use a checkpoint of the same "
                "architecture, or a plain NAFNet of the same width and blocks."
            ) from None
        return "strict"
    merged = dict(own)
    merged.update({k: v for k, v in state_dict.items() if k != "intro.weight"})
    widened = torch.zeros_like(own["intro.weight"])
    widened[:, :3] = intro
    merged["intro.weight"] = widened
    load_strict(net, merged)
    logger.info("--init: plain NAFNet copied, %d extra intro channels zeroed", widened.shape[1] - 3)
    return "from-plain"
