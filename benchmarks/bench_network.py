"""NAFNet forward: an upstream-style module versus ours, same weights, side by side.

The "upstream" side restates the published code path plainly: NCHW tensors, LayerNorm
as mean / variance / normalise / affine, ``AdaptiveAvgPool2d`` for the channel attention
and, with TLC, the 2-D prefix-sum local pool. It loads our state dict by name (which
also checks the key layout). Each side runs in its own process: a warm-up on a small
crop, then full-size forwards timed, the first with its peak memory; the outputs are
compared in the parent.

    python -m benchmarks.bench_network [--quick] [--device cpu|cuda]
                                       [--layout auto|channels_last|nchw] [--json PATH]

On CUDA both sides run float32 with TF32 off and then bf16 autocast-free casts of the same
modules; time is taken after a device synchronise and memory is the growth of torch's
peak allocation over the forward (RSS on the CPU). Ours runs in the layout ``restore``
gives it (``--layout auto``: NCHW for float32 with TF32 off on CUDA, else channels_last),
or the one asked for.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.common import MB, in_child, markdown_table, peak_rss, write_json


class UpstreamLayerNorm2d(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))

    def forward(self, x: Tensor) -> Tensor:
        mu = x.mean(1, keepdim=True)
        var = (x - mu).pow(2).mean(1, keepdim=True)
        y = (x - mu) / (var + 1e-6).sqrt()
        return self.weight.view(1, -1, 1, 1) * y + self.bias.view(1, -1, 1, 1)


class UpstreamLocalPool(nn.Module):
    """Upstream's TLC AvgPool2d (non-fast path): 2-D prefix sum, replicate padding."""

    def __init__(self, kernel: tuple[int, int]) -> None:
        super().__init__()
        self.kernel = kernel

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        if self.kernel[0] >= h and self.kernel[1] >= w:
            return F.adaptive_avg_pool2d(x, 1)
        k1, k2 = min(h, self.kernel[0]), min(w, self.kernel[1])
        s = F.pad(x.cumsum(dim=-1).cumsum(dim=-2), (1, 0, 1, 0))
        out = s[:, :, :-k1, :-k2] + s[:, :, k1:, k2:] - s[:, :, :-k1, k2:] - s[:, :, k1:, :-k2]
        out = out / (k1 * k2)
        _h, _w = out.shape[2:]
        pad = ((w - _w) // 2, (w - _w + 1) // 2, (h - _h) // 2, (h - _h + 1) // 2)
        return F.pad(out, pad, mode="replicate")


class UpstreamBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, 2 * c, 1)
        self.conv2 = nn.Conv2d(2 * c, 2 * c, 3, padding=1, groups=2 * c)
        self.conv3 = nn.Conv2d(c, c, 1)
        self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, c, 1))
        self.conv4 = nn.Conv2d(c, 2 * c, 1)
        self.conv5 = nn.Conv2d(c, c, 1)
        self.norm1 = UpstreamLayerNorm2d(c)
        self.norm2 = UpstreamLayerNorm2d(c)
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))

    @staticmethod
    def gate(x: Tensor) -> Tensor:
        x1, x2 = x.chunk(2, dim=1)
        return x1 * x2

    def forward(self, inp: Tensor) -> Tensor:
        x = self.gate(self.conv2(self.conv1(self.norm1(inp))))
        x = self.conv3(x * self.sca(x))
        y = inp + x * self.beta
        x = self.conv5(self.gate(self.conv4(self.norm2(y))))
        return y + x * self.gamma


class UpstreamNAFNet(nn.Module):
    def __init__(self, width: int, enc: list[int], middle: int, dec: list[int]) -> None:
        super().__init__()
        self.intro = nn.Conv2d(3, width, 3, padding=1)
        self.ending = nn.Conv2d(width, 3, 3, padding=1)
        self.encoders, self.downs = nn.ModuleList(), nn.ModuleList()
        self.ups, self.decoders = nn.ModuleList(), nn.ModuleList()
        chan = width
        for num in enc:
            self.encoders.append(nn.Sequential(*[UpstreamBlock(chan) for _ in range(num)]))
            self.downs.append(nn.Conv2d(chan, 2 * chan, 2, 2))
            chan *= 2
        self.middle_blks = nn.Sequential(*[UpstreamBlock(chan) for _ in range(middle)])
        for num in dec:
            self.ups.append(
                nn.Sequential(nn.Conv2d(chan, chan * 2, 1, bias=False), nn.PixelShuffle(2))
            )
            chan //= 2
            self.decoders.append(nn.Sequential(*[UpstreamBlock(chan) for _ in range(num)]))
        self.padder_size = 2 ** len(self.encoders)

    def set_tlc(self) -> None:
        """Upstream's conversion: kernels fixed by a 256 x 256 dummy run."""
        seen: dict[int, tuple[int, int]] = {}
        hooks = [
            m.sca.register_forward_pre_hook(
                lambda mod, a: seen.__setitem__(id(mod), tuple(a[0].shape[-2:]))
            )
            for m in self.modules()
            if isinstance(m, UpstreamBlock)
        ]
        with torch.no_grad():
            self(torch.zeros(1, 3, 256, 256))
        for hook in hooks:
            hook.remove()
        for m in self.modules():
            if isinstance(m, UpstreamBlock):
                h, w = seen[id(m.sca)]
                m.sca[0] = UpstreamLocalPool((h * 384 // 256, w * 384 // 256))

    def features(self, x: Tensor, image: Tensor) -> Tensor:
        """The U-Net on the padded input ``x``; adds the padded ``image`` as the residual."""
        x = self.intro(x)
        encs = []
        for encoder, down in zip(self.encoders, self.downs, strict=True):
            x = encoder(x)
            encs.append(x)
            x = down(x)
        x = self.middle_blks(x)
        for decoder, up, skip in zip(self.decoders, self.ups, encs[::-1], strict=True):
            x = decoder(up(x) + skip)
        return self.ending(x) + image

    def forward(self, inp: Tensor) -> Tensor:
        _, _, h, w = inp.shape
        ph, pw = (-h) % self.padder_size, (-w) % self.padder_size
        inp = F.pad(inp, (0, pw, 0, ph))
        return self.features(inp, inp)[:, :, :h, :w]


def _build(side: str, cfg: dict[str, Any], tlc: bool) -> nn.Module:
    from sam_deblur_cli.nets import NetConfig, build_network
    from sam_deblur_cli.nets.tlc import set_tlc

    torch.manual_seed(0)
    ours = build_network(NetConfig(variant="plain", **cfg))
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if name.endswith(("beta", "gamma")):
                p.normal_(0, 0.1)
    if side == "ours":
        set_tlc(ours, tlc)
        return ours
    up = UpstreamNAFNet(cfg["width"], list(cfg["enc_blk_nums"]), 1, [1] * len(cfg["enc_blk_nums"]))
    up.load_state_dict(ours.state_dict(), strict=True)
    if tlc:
        up.set_tlc()
    return up.eval()


def _image(h: int, w: int) -> Tensor:
    torch.manual_seed(1)
    return torch.rand(1, 3, h, w) * torch.linspace(0.2, 1.0, w)


def stage_run(
    side: str,
    cfg: dict[str, Any],
    tlc: bool,
    h: int,
    w: int,
    repeat: int,
    device: str = "cpu",
    precision: str = "fp32",
    layout: str = "auto",
) -> dict[str, Any]:
    """One side in its own process: warm up on a 64 x 64 crop (kernels, allocator), then
    ``repeat`` full-size forwards; best and median wall time, peak memory growth of the
    first full-size forward, and the output (for the difference between the sides)."""
    from sam_deblur_cli.devices import tf32_mode

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    from sam_deblur_cli.restore import Target, memory_format_for

    net = _build(side, cfg, tlc).to(device=device, dtype=dtype)
    x = _image(h, w).to(device=device, dtype=dtype)
    cuda = device.startswith("cuda")
    if side == "ours":
        formats = {"channels_last": torch.channels_last, "nchw": torch.contiguous_format}
        target = Target(torch.device(device), dtype)
        net.memory_format = formats.get(layout) or memory_format_for(
            target, False if cuda else None
        )

    def forward() -> tuple[Tensor, float]:
        start = time.perf_counter()
        out = net(x)
        if cuda:
            torch.cuda.synchronize()
        return out, time.perf_counter() - start

    times = []
    with torch.inference_mode(), tf32_mode(False if cuda else None):
        net(x[..., :64, :64])
        forward()  # full-size warm-up on the GPU: cuDNN picks its kernels here
        if cuda:
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            out, seconds = forward()
            peak = torch.cuda.max_memory_allocated() - base
        else:
            with peak_rss() as meter:
                out, seconds = forward()
            peak = meter.peak_bytes
        times.append(seconds)
        for _ in range(repeat - 1):
            times.append(forward()[1])
    return {
        "time": {"best_s": min(times), "median_s": statistics.median(times)},
        "peak_bytes": peak,
        # numpy, not a tensor: a tensor would cross by a shared-memory handle that dies
        # with this process
        "output": out.float().cpu().numpy(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small image, fewer blocks")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--layout", choices=("auto", "channels_last", "nchw"), default="auto")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    precisions = ["fp32", "bf16"] if args.device == "cuda" else ["fp32"]
    if args.quick:
        cfg: dict[str, Any] = {"width": 32, "enc_blk_nums": (1, 1, 1, 4)}
        h, w, repeat = 360, 640, 3  # sub-second forwards: one run alone is noise
    else:
        cfg = {"width": 32, "enc_blk_nums": (1, 1, 1, 28)}
        h, w, repeat = 720, 1280, 1  # a run takes seconds; the ratio is what matters
    if args.device == "cuda":
        repeat = max(repeat, 10)  # milliseconds on a GPU
    config = {**cfg, "height": h, "width_px": w, "device": args.device, "layout": args.layout}
    results: dict[str, Any] = {"config": config, "runs": {}}
    rows = []
    for precision, tlc in [(p, t) for p in precisions for t in (False, True)]:
        run = (args.device, precision)
        up = in_child(stage_run, "upstream", cfg, tlc, h, w, repeat, *run)
        ours = in_child(stage_run, "ours", cfg, tlc, h, w, repeat, *run, args.layout)
        t_up, t_ours = up["time"], ours["time"]
        m_up, m_ours = up["peak_bytes"], ours["peak_bytes"]
        diff = float(np.abs(up["output"] - ours["output"]).max())
        ratio = t_ours["best_s"] / t_up["best_s"]
        name = ("tlc" if tlc else "global") + ("" if precision == "fp32" else f" {precision}")
        results["runs"][name] = {
            "upstream_time": t_up, "ours_time": t_ours, "time_ratio": ratio,
            "upstream_peak_bytes": m_up, "ours_peak_bytes": m_ours,
            "max_abs_diff": diff,
        }  # fmt: skip
        rows.append([
            name,
            f"{t_up['best_s']:.2f} s", f"{t_ours['best_s']:.2f} s", f"{ratio:.2f}",
            f"{m_up / MB:.0f} MB", f"{m_ours / MB:.0f} MB", f"{m_ours / max(m_up, 1):.2f}",
            f"{diff:.1e}",
        ])  # fmt: skip
    where = "CUDA" if args.device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"NAFNet width {cfg['width']} enc {list(cfg['enc_blk_nums'])}, {w}x{h}, {where}, "
          f"best of {repeat}")  # fmt: skip
    headers = ["pooling", "upstream", "ours", "time ours/up", "upstream peak", "ours peak",
               "mem ours/up", "max |diff|"]  # fmt: skip
    print(markdown_table(headers, rows))
    write_json(args.json, results)


if __name__ == "__main__":
    main()
