"""Checkpoints of a run (after timm's ``utils/checkpoint_saver.py``): every RNG a run draws
from, ``checkpoints/last.pt`` with its ``keep`` newest numbered copies, and reading one
back safely (weights only: no pickled code runs). Files are written through ``files``.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sam_deblur_cli.errors import CheckpointError, UsageError

LAST = "last.pt"


def rng_state() -> dict[str, Any]:
    """Every global RNG a run draws from (torch CPU and CUDA, numpy, python)."""
    _kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "keys": torch.from_numpy(np.asarray(keys).astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np_state = state["numpy"]
    keys = np_state["keys"].numpy().astype(np.uint32)
    np.random.set_state(
        ("MT19937", keys, np_state["pos"], np_state["has_gauss"], np_state["cached"])
    )
    version, inner, gauss = state["python"]
    random.setstate((version, tuple(inner), gauss))


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and python from ``seed``."""
    torch.manual_seed(seed)
    np.random.seed(seed % (1 << 32))
    random.seed(seed)


def save_checkpoint(state: dict[str, Any], folder: Path, *, step: int, keep: int) -> Path:
    """Write ``state`` as ``folder/last.pt`` and, when ``keep``, a numbered copy
    (``step_NNNNNNN.pt``, a hard link) of which only the ``keep`` newest stay."""
    last = folder / LAST
    torch_save(state, last)
    if keep:
        numbered = folder / f"step_{step:07d}.pt"
        numbered.unlink(missing_ok=True)
        os.link(last, numbered)
        for old in sorted(folder.glob("step_*.pt"))[:-keep]:
            old.unlink()
    return last


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load a resumable checkpoint (weights only: no pickled code runs)."""
    if not path.is_file():
        raise UsageError(f"{path} does not exist; this run has no checkpoint to resume from.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for damaged files
        raise CheckpointError(
            f"Checkpoint {path} cannot be read ({type(exc).__name__}); it is damaged: resume "
            "from a numbered copy in checkpoints/ (copy it over last.pt) or start a new run."
        ) from None
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{path} is not a training checkpoint; pass a run folder.")
    return state


def torch_save(obj: object, path: Path) -> Path:
    """``torch.save`` through the atomic writer."""
    from sam_deblur_cli.files import atomic_file

    with atomic_file(path) as handle:
        torch.save(obj, handle)
    return path
