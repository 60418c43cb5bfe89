"""Mask Average Pooling: upstream's dense broadcast versus our label-map segment mean.

Time at 720p with 150 groups, peak memory at 12 MP (4000 x 3000) with 60 and 200 groups,
seg_channel 2 as in the published models. Every stage runs in its own process. A dense
stage that would not fit in the free memory is reported as "does not fit", not run.

    python -m benchmarks.bench_map [--quick] [--device cpu|cuda] [--json PATH]

On CUDA the times follow a device synchronise and memory is torch's peak allocation.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from benchmarks.common import (
    MB,
    in_child,
    markdown_table,
    mem_available_bytes,
    peak_rss,
    time_it,
    write_json,
)

SEG_CHANNELS = 2


def dense_map(seg: Tensor, labels: Tensor, groups: int) -> Tensor:
    """Upstream's form: M float masks of value 1/255 (its loader divides the boolean slices
    by 255), M x H x W x C products, and the uncovered remainder as one more mask."""
    feat = seg[0].permute(1, 2, 0)[None]  # 1 x H x W x C
    masks = torch.stack([labels[0] == g for g in range(groups)])[..., None].float() / 255.0
    rest = 1 - masks.sum(0).clamp(0, 1)
    masks = torch.cat([masks, rest[None]])
    means = (masks * feat).sum(dim=(1, 2)) / (masks.sum(dim=(1, 2)) + 1e-8)
    out = (masks * means[:, None, None, :]).sum(0)
    return out.permute(2, 0, 1)[None]


def dense_bytes(h: int, w: int, groups: int) -> int:
    """Peak extra memory of ``dense_map``: the float masks plus one M x H x W x C product."""
    return groups * h * w * 4 * (1 + SEG_CHANNELS)


def _inputs(h: int, w: int, groups: int) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(0)
    seg = torch.randn(1, SEG_CHANNELS, h, w, generator=gen)
    # blocky groups, like SAM regions, plus a 16-pixel uncovered padding band
    blocks = torch.randint(0, groups, (1, h // 16 + 1, w // 16 + 1), generator=gen)
    labels = blocks.repeat_interleave(16, 1).repeat_interleave(16, 2)[:, :h, :w].contiguous()
    labels[:, :, -16:] = -1
    return seg, labels


def _op(side: str, seg: Tensor, labels: Tensor, groups: int) -> Tensor:
    from sam_deblur_cli.nets.map import mask_average

    return mask_average(seg, labels) if side == "ours" else dense_map(seg, labels, groups)


def _synced(side: str, seg: Tensor, labels: Tensor, groups: int) -> Tensor:
    out = _op(side, seg, labels, groups)
    if seg.is_cuda:
        torch.cuda.synchronize()
    return out


def stage_time(
    side: str, h: int, w: int, groups: int, repeat: int, device: str = "cpu"
) -> dict[str, float]:
    seg, labels = (t.to(device) for t in _inputs(h, w, groups))
    if device == "cuda":
        repeat = max(repeat, 10)
    with torch.inference_mode():
        return time_it(lambda: _synced(side, seg, labels, groups), repeat=repeat, warmup=1)


def stage_memory(side: str, h: int, w: int, groups: int, device: str = "cpu") -> dict[str, float]:
    seg, labels = (t.to(device) for t in _inputs(h, w, groups))
    with torch.inference_mode():
        _synced(side, seg[..., :64, :64], labels[..., :64, :64], groups)  # allocator warm-up
        if device == "cuda":
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            timing = time_it(lambda: _synced(side, seg, labels, groups), repeat=1, warmup=0)
            peak = torch.cuda.max_memory_allocated() - base
        else:
            with peak_rss() as meter:
                timing = time_it(lambda: _op(side, seg, labels, groups), repeat=1, warmup=0)
            peak = meter.peak_bytes
    return {"peak_bytes": peak, "feature_map_bytes": seg.nbytes, **timing}


def stage_diff(h: int, w: int, groups: int) -> float:
    seg, labels = _inputs(h, w, groups)
    with torch.inference_mode():
        return float(
            (_op("ours", seg, labels, groups) - dense_map(seg, labels, groups)).abs().max()
        )


def _memory_row(h: int, w: int, groups: int, device: str) -> tuple[dict[str, Any], list[str]]:
    ours = in_child(stage_memory, "ours", h, w, groups, device)
    need, free = dense_bytes(h, w, groups), _free_bytes(device)
    if need > 0.7 * free:
        dense: dict[str, Any] = {"status": "does not fit", "needs_bytes": need, "free": free}
        dense_cell, ratio = f"does not fit (needs ~{need / 2**30:.0f} GB)", "-"
    else:
        dense = {"status": "ok", **in_child(stage_memory, "dense", h, w, groups, device)}
        dense_cell = f"{dense['peak_bytes'] / MB:.0f} MB, {dense['best_s']:.2f} s"
        ratio = f"{ours['peak_bytes'] / max(dense['peak_bytes'], 1):.4f}"
    row = [f"{w}x{h}, {groups} groups", dense_cell,
           f"{ours['peak_bytes'] / MB:.0f} MB, {ours['best_s']:.2f} s", ratio,
           f"{ours['peak_bytes'] / ours['feature_map_bytes']:.1f}"]  # fmt: skip
    return {"dense": dense, "ours": ours}, row


def _free_bytes(device: str) -> int:
    if device == "cuda":
        return int(in_child(_cuda_free))
    return mem_available_bytes()


def _cuda_free() -> int:
    return int(torch.cuda.mem_get_info()[0])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="time only, 1 run")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    h, w, groups, repeat = 720, 1280, 150, 1 if args.quick else 3
    memory_cases = [] if args.quick else [(3000, 4000, 60), (3000, 4000, 200)]

    t_dense = in_child(stage_time, "dense", h, w, groups, repeat, args.device)
    t_ours = in_child(stage_time, "ours", h, w, groups, repeat, args.device)
    diff = in_child(stage_diff, h, w, groups)
    speedup = t_dense["best_s"] / t_ours["best_s"]
    results: dict[str, Any] = {
        "device": args.device,
        "time": {"size": [w, h], "groups": groups, "dense": t_dense, "ours": t_ours,
                 "speedup": speedup, "max_abs_diff": diff},
        "memory": [],
    }  # fmt: skip
    where = "CUDA" if args.device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"MAP (seg_channel {SEG_CHANNELS}), {where}\n")
    print(markdown_table(
        ["time", "dense (upstream)", "ours", "speed-up", "max |diff|"],
        [[f"{w}x{h}, {groups} groups", f"{t_dense['best_s']:.3f} s", f"{t_ours['best_s']:.4f} s",
          f"{speedup:.0f}x", f"{diff:.1e}"]],
    ))  # fmt: skip
    rows = []
    for mh, mw, mg in memory_cases:
        entry, row = _memory_row(mh, mw, mg, args.device)
        results["memory"].append({"size": [mw, mh], "groups": mg, **entry})
        rows.append(row)
    if rows:
        print()
        headers = ["peak extra memory", "dense (upstream)", "ours", "ours/dense", "ours / one map"]
        print(markdown_table(headers, rows))
    write_json(args.json, results)


if __name__ == "__main__":
    main()
