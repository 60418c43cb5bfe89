"""DDP: two CPU processes (gloo) train like one process with the same global batch."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from train_data import tiny_config, write_pairs

from sam_deblur_cli.checkpoints import read_state_dict
from sam_deblur_cli.train.config import TrainConfig, check
from sam_deblur_cli.train.models import build_model
from sam_deblur_cli.train.session import train_run


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rank_main(rank: int, world: int, port: int, cfg: TrainConfig) -> None:
    """One torchrun-like process: the environment torchrun would set, then the library."""
    import torch.distributed as td

    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    try:
        train_run(cfg, register=False)
    finally:
        if td.is_initialized():
            td.destroy_process_group()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.subprocess
def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path: Path) -> None:
    pairs = write_pairs(tmp_path / "pairs")
    # Mask dropout draws from each process's own RNG, so it cannot match across world
    # sizes; the MAP unit itself runs (p = 0).
    changes = {"steps": 4, "batch": 4, "mask_dropout": 0.0, "device": "cpu"}
    single = tiny_config(pairs, tmp_path / "one", "map", **changes)
    train_run(single, register=False)
    double = tiny_config(pairs, tmp_path / "two", "map", **changes)
    mp.spawn(_rank_main, args=(2, _free_port(), double), nprocs=2, join=True)
    one = read_state_dict(tmp_path / "one" / "model.pth")
    two = read_state_dict(tmp_path / "two" / "model.pth")
    assert one.keys() == two.keys()
    torch.manual_seed(single.seed)
    start = build_model(check(single)).state_dict()  # the runs' initial weights
    assert not torch.equal(start["intro.weight"], one["intro.weight"])  # they trained
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-6, msg=key)
    log = (tmp_path / "two" / "log.csv").read_text().splitlines()
    assert log[0].startswith("step,loss") and len(log) == 2  # rank 0 alone wrote it
