"""Training throughput: our step versus an upstream-style (BasicSR-like) step, one run.

Both sides train a MAP network (mask dropout 0.5) on the same batches of 256 x 256 crops
with ~40 groups each: AdamW, PSNR loss, gradient-norm clipping at 0.01, cosine step.

- ours: ``train.loop.Trainer``'s own step (label-map MAP with dropout, channels_last
  NAFNet, uint8 batches divided on the device), fed pre-made batches;
- upstream-style: ``stock_pipeline.UpstreamSegNAFNet`` (plain NCHW NAFNet) with the dense
  MAP of ``bench_map.dense_map`` per sample (M float masks, M x H x W x C products, dropped
  masks zeroed, as upstream's per-sample mask lists), in a BasicSR-like loop.

Data loading is left out of both (pre-made batches). Also reported: the MAP unit's share
of a step (its forward + backward alone, against the whole step).

    python -m benchmarks.bench_train [--quick] [--device cuda] [--batch 8] [--precision bf16]
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from benchmarks.bench_map import SEG_CHANNELS
from benchmarks.common import markdown_table, write_json
from benchmarks.stock_pipeline import UpstreamSegNAFNet

GROUPS = 40


def _labels(n: int, size: int, gen: torch.Generator) -> Tensor:
    """Blocky SAM-like label maps, groups 0..GROUPS-1, 16-pixel blocks."""
    blocks = torch.randint(0, GROUPS, (n, size // 16, size // 16), generator=gen)
    return blocks.repeat_interleave(16, 1).repeat_interleave(16, 2).contiguous()


def _batches(n: int, batch: int, size: int) -> list[tuple[Tensor, Tensor, Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return [
        (
            torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=gen),
            torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=gen),
            _labels(batch, size, gen),
        )
        for _ in range(n)
    ]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def dense_map_dropout(seg: Tensor, labels: Tensor, p: float) -> Tensor:
    """Upstream's mask_average for one sample: M masks of value 1/255, floor(p*M) zeroed."""
    groups = int(labels.max()) + 1
    feat = seg[0].permute(1, 2, 0)[None]
    masks = torch.stack([labels[0] == g for g in range(groups)])[..., None].float() / 255.0
    drop = torch.randperm(groups)[: int(p * groups)]
    masks[drop.to(masks.device)] = 0
    rest = 1 - masks.sum(0).clamp(0, 1)
    masks = torch.cat([masks, rest[None]])
    means = (masks * feat).sum(dim=(1, 2)) / (masks.sum(dim=(1, 2)) + 1e-8)
    return (masks * means[:, None, None, :]).sum(0).permute(2, 0, 1)[None]


class UpstreamTrainNet(UpstreamSegNAFNet):
    """Per-sample dense MAP (upstream collates a list of mask stacks), then the batch."""

    def map_unit(self, image: Tensor, labels: Tensor) -> Tensor:
        seg = self.pre_seg_in(self.pre_seg(image))
        return torch.cat(
            [dense_map_dropout(seg[i : i + 1], labels[i : i + 1], 0.5) for i in range(len(seg))]
        )

    def forward(self, inp: Tensor, labels: Tensor | None = None) -> Tensor:
        assert labels is not None
        return self.features(torch.cat([inp, self.map_unit(inp, labels)], dim=1), inp)


def upstream_side(
    args: argparse.Namespace, batches: list[Any], device: torch.device
) -> dict[str, float]:
    torch.manual_seed(0)
    net = UpstreamTrainNet(args.width, args.enc, 1, [1] * len(args.enc), SEG_CHANNELS).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-3, betas=(0.9, 0.9))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=200_000, eta_min=1e-7)

    def step(batch: tuple[Tensor, Tensor, Tensor]) -> None:
        lq, gt, labels = (t.to(device) for t in batch)
        lq, gt = lq.float() / 255, gt.float() / 255
        opt.zero_grad()
        out = net(lq, labels)
        mse = (out - gt).pow(2).mean(dim=(1, 2, 3))
        loss = (10 / math.log(10)) * torch.log(mse + 1e-8).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 0.01)
        opt.step()
        sched.step()

    def map_only(batch: tuple[Tensor, Tensor, Tensor]) -> None:
        lq = batch[0].to(device).float() / 255
        net.map_unit(lq, batch[2].to(device)).sum().backward()

    return _time(step, map_only, batches, device, args.batch)


def our_side(
    args: argparse.Namespace, batches: list[Any], device: torch.device
) -> dict[str, float]:
    from sam_deblur_cli.nets import NetConfig
    from sam_deblur_cli.train.config import TrainConfig, check
    from sam_deblur_cli.train.data import TrainImage
    from sam_deblur_cli.train.loop import Trainer

    with tempfile.TemporaryDirectory() as run:
        cfg = check(
            TrainConfig(
                data=".",
                run_dir=run,
                net=NetConfig(
                    variant="map",
                    width=args.width,
                    enc_blk_nums=tuple(args.enc),
                    dec_blk_nums=(1,) * len(args.enc),
                ),
                batch=args.batch,
                crop=args.size,
                precision=args.precision,
                device=str(device),
                workers=0,
            )
        )
        dummy = np.zeros((args.size, args.size, 3), np.uint8)
        image = TrainImage("x", dummy, dummy, np.zeros(dummy.shape[:2], np.int32))
        trainer = Trainer(cfg, [image], device=str(device))

        def step(batch: tuple[Tensor, Tensor, Tensor]) -> None:
            trainer._train_step(iter([batch]))

        def map_only(batch: tuple[Tensor, Tensor, Tensor]) -> None:
            lq = batch[0].to(device).float() / 255
            trainer.net.mask_average(lq, batch[2].to(device)).sum().backward()  # type: ignore[operator]

        return _time(step, map_only, batches, device, args.batch)


def _time(
    step: Any, map_only: Any, batches: list[Any], device: torch.device, batch: int
) -> dict[str, float]:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step(batches[0])  # warm-up
    times, map_times = [], []
    for b in batches[1:]:
        _sync(device)
        start = time.perf_counter()
        step(b)
        _sync(device)
        times.append(time.perf_counter() - start)
        start = time.perf_counter()
        map_only(b)
        _sync(device)
        map_times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    record = {
        "step_s": seconds,
        "images_per_s": batch / seconds,
        "map_share": statistics.median(map_times) / seconds,
    }
    if device.type == "cuda":
        record["peak_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small network, 128 px, 2 steps")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--precision", default="fp32", help="ours only (upstream ran fp32)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    args.width, args.enc, args.size = 32, [1, 1, 1, 28], 256
    if args.quick:
        args.width, args.enc, args.size, args.steps = 16, [1, 1, 1, 2], 128, 2
        args.batch = min(args.batch, 4)
    device = torch.device(args.device)
    batches = _batches(args.steps + 1, args.batch, args.size)
    results = {
        "upstream-style": upstream_side(args, batches, device),
        "ours": our_side(args, batches, device),
    }
    headers = ["side", "step (s)", "images/s", "MAP share", "peak GB"]
    rows = [
        [
            name,
            f"{r['step_s']:.3f}",
            f"{r['images_per_s']:.2f}",
            f"{100 * r['map_share']:.1f}%",
            f"{r['peak_gb']:.2f}" if "peak_gb" in r else "-",
        ]
        for name, r in results.items()
    ]
    print(
        f"width {args.width}, enc {args.enc}, batch {args.batch}, {args.size} px, "
        f"{GROUPS} groups, {args.device}, ours {args.precision}"
    )
    print(markdown_table(headers, rows))
    write_json(
        args.json,
        {"args": {k: v for k, v in vars(args).items() if k != "json"}, "results": results},
    )


if __name__ == "__main__":
    main()
