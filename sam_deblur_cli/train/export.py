"""The result of a run, usable at once: ``RUN_DIR/model.pth`` in upstream's format
(``{"params": state_dict}``, loadable by upstream's BasicSR code and by ours) and a local
model entry, so ``sam-deblur photo.jpg --model NAME`` runs it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

    from sam_deblur_cli.train.config import TrainConfig
    from sam_deblur_cli.train.loop import Trainer

MODEL_FILE = "model.pth"


def export_weights(state_dict: dict[str, Tensor], path: Path) -> Path:
    """Write ``{"params": state_dict}`` (BasicSR's format, upstream's loader reads it)."""
    from sam_deblur_cli.train.checkpoint import torch_save

    return torch_save({"params": state_dict}, path)


def export_model(trainer: Trainer, *, register: bool = True) -> tuple[Path, str | None]:
    """Write ``RUN_DIR/model.pth`` (the EMA weights when the run keeps an EMA) and, with
    ``register``, the local model entry; returns the file and the registered name."""
    path = export_weights(trainer.final_state_dict(), Path(trainer.cfg.run_dir) / MODEL_FILE)
    name = register_model(trainer.cfg, path) if register else None
    return path, name


def register_model(cfg: TrainConfig, path: Path) -> str:
    """Record ``path`` as the local model ``cfg.model_name`` (architecture, mask recipe,
    mask value, TLC default, sha256) in the user manifest."""
    from sam_deblur_cli.weights.local import LocalModel, add_local_model

    model = LocalModel(
        name=cfg.model_name,
        file=path.resolve(),
        net=cfg.net,
        recipe=cfg.recipe if cfg.variant != "plain" else None,
        tlc=cfg.tlc,
        description=f"trained by sam-deblur train ({cfg.variant}, {cfg.steps} steps)",
    )
    add_local_model(model)
    return model.name
