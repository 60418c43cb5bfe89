"""Make the README's before/after picture with the real `sam-deblur` command.

The published checkpoints cannot be fetched on the machine this README was written on, so
the picture uses a small plain NAFNet (the real architecture, width 16, fewer blocks)
trained here for a few minutes on synthetic motion blur of scikit-image's photos. The
held-out photo (`coffee`) is blurred with a motion kernel it never saw, the checkpoint is
installed with `sam-deblur weights import`, and the output comes from `sam-deblur PHOTO`.

    python docs/demo/make_demo.py [--minutes 8] [--out docs/demo]

Writes OUT/blurred.png, OUT/deblurred.png, OUT/before-after.jpg and OUT/demo.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageDraw
from skimage import data as skdata

from sam_deblur_cli.metrics import psnr
from sam_deblur_cli.nets import NetConfig, build_network

TRAIN_PHOTOS = ("astronaut", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")
HELD_OUT = "coffee"
NET = NetConfig(variant="plain", width=16, enc_blk_nums=(1, 1, 1, 4), dec_blk_nums=(1, 1, 1, 1))
MANIFEST = """schema = 1

[models.demo-nafnet]
kind = "deblur"
description = "Demo: plain NAFNet width 16 trained for minutes on synthetic blur"
license = "Apache-2.0"
homepage = "https://github.com/HPLQAQ/SAM-Deblur"
sha256 = ""
size = 0
source = { page = "docs/demo/make_demo.py", file = "demo-nafnet.pth", note = "made locally" }
tlc = true

[models.demo-nafnet.net]
variant = "plain"
width = 16
enc_blk_nums = [1, 1, 1, 4]
middle_blk_num = 1
dec_blk_nums = [1, 1, 1, 1]
"""


def motion_kernel(rng: np.random.Generator, length: float, angle: float) -> np.ndarray:
    """A normalised linear motion-blur kernel (float32, odd square)."""
    size = math.ceil(length) | 1
    kernel = np.zeros((size * 4, size * 4), np.float32)
    c = size * 2
    dx, dy = math.cos(angle) * length * 2, math.sin(angle) * length * 2
    cv2.line(kernel, (round(c - dx), round(c - dy)), (round(c + dx), round(c + dy)), 1.0, 2)
    kernel = cv2.resize(kernel, (size, size), interpolation=cv2.INTER_AREA)
    return kernel / kernel.sum()


def blur(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Convolve an H x W x 3 float32 image with `kernel` (reflected borders)."""
    return cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_REFLECT)


def training_batch(
    photos: list[np.ndarray], rng: np.random.Generator, size: int, count: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` random (blurred, sharp) crops as N x 3 x size x size tensors in [0, 1]."""
    blurred, sharp = [], []
    for _ in range(count):
        photo = photos[rng.integers(len(photos))]
        y = rng.integers(photo.shape[0] - size - 32)
        x = rng.integers(photo.shape[1] - size - 32)
        crop = photo[y : y + size + 32, x : x + size + 32]
        kernel = motion_kernel(rng, rng.uniform(5, 17), rng.uniform(0, math.pi))
        noisy = blur(crop, kernel) + rng.normal(0, 1 / 255, crop.shape).astype(np.float32)
        blurred.append(np.clip(noisy, 0, 1)[16:-16, 16:-16])
        sharp.append(crop[16:-16, 16:-16])
    to_t = lambda xs: torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).contiguous()  # noqa: E731
    return to_t(blurred), to_t(sharp)


def train(minutes: float, seed: int = 0) -> tuple[torch.nn.Module, int]:
    """Train the demo network with upstream's PSNR loss and AdamW for `minutes`."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    photos = [getattr(skdata, name)().astype(np.float32) / 255 for name in TRAIN_PHOTOS]
    net = build_network(NET).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-3, betas=(0.9, 0.9))
    deadline, steps = time.monotonic() + minutes * 60, 0
    while time.monotonic() < deadline:
        blurred, sharp = training_batch(photos, rng, 96, 8)
        loss = 10 * torch.log10(((net(blurred) - sharp) ** 2).mean(dim=(1, 2, 3)) + 1e-8).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
    return net.eval(), steps


def run_cli(args: list[str], env: dict[str, str]) -> None:
    cli = Path(sys.executable).with_name("sam-deblur")
    subprocess.run([str(cli), *args], check=True, env=env)


def labelled(image: np.ndarray, text: str) -> Image.Image:
    """The uint8 image with a caption bar underneath."""
    pic = Image.fromarray(image)
    canvas = Image.new("RGB", (pic.width, pic.height + 28), "white")
    canvas.paste(pic, (0, 0))
    ImageDraw.Draw(canvas).text((8, pic.height + 8), text, fill="black")
    return canvas


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=8.0)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    sharp = skdata.coffee()
    kernel = motion_kernel(np.random.default_rng(1234), 13.0, 0.35)
    blurred = np.clip(blur(sharp.astype(np.float32) / 255, kernel) * 255 + 0.5, 0, 255)
    blurred = blurred.astype(np.uint8)
    Image.fromarray(blurred).save(args.out / "blurred.png")

    net, steps = train(args.minutes)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        torch.save({"params": net.state_dict()}, work / "demo-nafnet.pth")
        (work / "weights.toml").write_text(MANIFEST)
        env = {**os.environ, "SAM_DEBLUR_HOME": str(work / "home")}
        env["SAM_DEBLUR_WEIGHTS"] = str(work / "weights.toml")
        run_cli(["weights", "import", "demo-nafnet", str(work / "demo-nafnet.pth")], env)
        out = args.out / "deblurred.png"
        run_cli(
            [
                str(args.out / "blurred.png"),
                "-o",
                str(out),
                "--model",
                "demo-nafnet",
                "--overwrite",
            ],
            env,
        )
    restored = np.asarray(Image.open(out).convert("RGB"))

    scores = {"blurred": psnr(blurred, sharp), "deblurred": psnr(restored, sharp)}
    panels = [
        labelled(blurred, f"blurred input  {scores['blurred']:.2f} dB"),
        labelled(restored, f"sam-deblur output  {scores['deblurred']:.2f} dB"),
        labelled(sharp, "sharp reference"),
    ]
    sheet = Image.new("RGB", (sum(p.width for p in panels) + 16, panels[0].height), "white")
    for i, panel in enumerate(panels):
        sheet.paste(panel, (i * (panel.width + 8), 0))
    sheet.save(args.out / "before-after.jpg", quality=90)
    record = {"train_minutes": args.minutes, "steps": steps, "psnr_db": scores}
    (args.out / "demo.json").write_text(json.dumps(record, indent=2))
    print(json.dumps(record))


if __name__ == "__main__":
    main()
