"""Where a process trains: its place in a torchrun job, joining the job, the device."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from sam_deblur_cli.errors import UsageError

if TYPE_CHECKING:
    from sam_deblur_cli.train.config import TrainConfig


@dataclass(frozen=True)
class Dist:
    """This process's place in a torchrun job (world 1: a single process)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Dist:
        """Read RANK / WORLD_SIZE / LOCAL_RANK as torchrun sets them."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        return cls(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(cfg: TrainConfig, dist: Dist) -> str:
    """The device this process trains on: its local GPU in a torchrun job on CUDA, else
    ``--device`` resolved."""
    from sam_deblur_cli.devices import resolve_device

    if dist.world > 1:
        cuda = torch.cuda.is_available() and cfg.device in ("auto", "cuda")
        return f"cuda:{dist.local_rank}" if cuda else "cpu"
    return resolve_device(cfg.device)[0]


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse reduced-precision training off CUDA (autocast there only)."""
    if precision != "fp32" and device.type != "cuda":
        raise UsageError(
            f"{precision} training uses autocast on a CUDA GPU; use --precision fp32 on {device}."
        )


def init_distributed(dist: Dist, device: str) -> None:
    """Join the torchrun job: NCCL on CUDA GPUs, gloo on the CPU."""
    import torch.distributed as td

    if dist.world > 1 and not td.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(dist.local_rank)
        td.init_process_group(backend, rank=dist.rank, world_size=dist.world)
