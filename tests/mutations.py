"""Seeded mutation corpora: damaged copies of every kind of file the tool reads, each fed to
the library function that reads that kind, in a child process (a decoder crash or hang ends
the child, not the test run).

    python tests/mutations.py --count N --seed S --work DIR [--kinds image,video:40,...]

prints one JSON line per case: ``{"kind", "case", "mutation", "outcome", "exit_code",
"message", "seconds"}``; ``outcome`` is "ok" (the damaged file still read), the
``SamDeblurError`` class name, "hang" (over the per-case limit) or "crash" (any other
exception, with its traceback in ``message``). A line ``{"start": ...}`` precedes each case,
so a child that dies names the case that killed it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import shutil
import signal
import struct
import sys
import time
import traceback
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

CASE_LIMIT_S = 20.0
TESTS_DIR = Path(__file__).resolve().parent


# --------------------------------------------------------------------------- mutations


def mutate(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One seeded damage of ``data``: truncation, bit flips, a zeroed or repeated span,
    or random bytes spliced in."""
    size = len(data)
    how = rng.choice(["truncate", "flip", "flip", "zero", "repeat", "splice"])
    if how == "truncate":
        cut = rng.randrange(0, size)
        return f"truncate@{cut}", data[:cut]
    buf = bytearray(data)
    if how == "flip":
        flips = rng.choice([1, 2, 4, 16, 64])
        for _ in range(flips):
            i = rng.randrange(size)
            buf[i] ^= 1 << rng.randrange(8)
        return f"flip{flips}", bytes(buf)
    start = rng.randrange(size)
    length = rng.randint(1, max(1, min(256, size - start)))
    if how == "zero":
        buf[start : start + length] = bytes(length)
        return f"zero@{start}+{length}", bytes(buf)
    if how == "repeat":
        return f"repeat@{start}+{length}", bytes(buf[: start + length] + buf[start:])
    noise = rng.randbytes(length)
    return f"splice@{start}+{length}", bytes(buf[:start] + noise + buf[start:])


# --------------------------------------------------------------------------- seeds


def _photo() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[::8, ::8, :3])  # 64 x 64


def _image_bytes(fmt: str) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    image = Image.fromarray(_photo())
    if fmt == "HEIF":
        import pillow_heif

        pillow_heif.register_heif_opener()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def giant_headers() -> dict[str, bytes]:
    """Small files whose headers claim 60000 x 60000 pixels (PNG, JPEG, BMP)."""
    png = (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0))
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 1000))
        + _png_chunk(b"IEND", b"")
    )
    jpeg = bytearray(_image_bytes("JPEG"))
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5 : sof + 9] = struct.pack(">HH", 60000, 60000)
    bmp = bytearray(_image_bytes("BMP"))
    bmp[18:26] = struct.pack("<ii", 60000, 60000)
    return {"giant.png": png, "giant.jpg": bytes(jpeg), "giant.bmp": bytes(bmp)}


def image_seeds() -> dict[str, bytes]:
    seeds = {f"seed.{ext}": _image_bytes(fmt) for ext, fmt in _IMAGE_FORMATS.items()}
    with contextlib.suppress(ImportError):  # pillow-heif is optional
        seeds["seed.heic"] = _image_bytes("HEIF")
    return seeds


_IMAGE_FORMATS = {"png": "PNG", "jpg": "JPEG", "tif": "TIFF", "webp": "WEBP"}


def mask_seeds() -> dict[str, bytes]:
    from sam_deblur_cli.masks.formats import write_groups_npz, write_segmask_png

    folder = Path(os.environ["MUTATIONS_WORK"]) / "mask-seeds"
    folder.mkdir(parents=True, exist_ok=True)
    labels = np.zeros((48, 64), np.int32)
    labels[10:30, 5:40], labels[20:40, 30:60] = 1, 2
    segmask = np.where(labels > 0, labels * 40, 0).astype(np.uint8)
    png = write_segmask_png(folder / "seed.png", segmask)
    npz = write_groups_npz(folder / "seed.npz", labels)
    return {"seed.png": png.read_bytes(), "seed.npz": npz.read_bytes()}


def giant_mask() -> bytes:
    """A gray PNG whose header claims 60000 x 60000 pixels."""
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 60000, 60000, 8, 0, 0, 0, 0))
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 1000))
        + _png_chunk(b"IEND", b"")
    )


def video_seeds() -> dict[str, bytes]:
    sys.path.insert(0, str(TESTS_DIR))
    from video_clips import blurred_frames, make_clip

    folder = Path(os.environ["MUTATIONS_WORK"]) / "video-seeds"
    seeds = {}
    for name, codec in (
        ("seed.mp4", "libx264"),
        ("seed.mkv", "libx264"),
        ("seed.webm", "libvpx-vp9"),
    ):
        make_clip(folder / name, blurred_frames(4), codec=codec, audio=name != "seed.webm")
        seeds[name] = (folder / name).read_bytes()
    return seeds


def checkpoint_seeds() -> dict[str, bytes]:
    import torch
    from safetensors.torch import save

    tensors = {"intro.weight": torch.randn(4, 3, 3, 3), "intro.bias": torch.randn(4)}
    buffer = io.BytesIO()
    torch.save({"params": tensors}, buffer)
    return {"seed.pth": buffer.getvalue(), "seed.safetensors": save(tensors)}


def manifest_seeds() -> dict[str, bytes]:
    local = (
        '[models.my-model]\nkind = "deblur"\nfile = "/nowhere/model.pth"\n'
        'sha256 = "' + "0" * 64 + '"\nrecipe = "sam-deblur-gopro"\n'
        '[models.my-model.net]\nvariant = "map"\nwidth = 8\n'
    )
    registry = (TESTS_DIR.parent / "weights.toml").read_bytes()  # the real one
    return {"weights.toml": registry, "local_models.toml": local.encode()}


# --------------------------------------------------------------------------- readers


def read_image(path: Path) -> None:
    from sam_deblur_cli.imageio import read_image

    read_image(path)


def read_mask(path: Path) -> None:
    from sam_deblur_cli.masks.formats import load_mask_file

    load_mask_file(path, (48, 64))


def read_video(path: Path) -> None:
    from sam_deblur_cli.video.probe import probe
    from sam_deblur_cli.video.read import iter_frames

    for _ in iter_frames(probe(path)):
        pass


def read_checkpoint(path: Path) -> None:
    from sam_deblur_cli.checkpoints import read_state_dict

    read_state_dict(path)


def read_manifest(path: Path) -> None:
    from sam_deblur_cli.weights import load_manifest

    if path.name.startswith("local_models"):
        home = path.parent / f"home-{path.stem}"
        (home).mkdir(exist_ok=True)
        os.environ["SAM_DEBLUR_HOME"] = str(home)
        from sam_deblur_cli.weights.local import local_manifest_path

        local_manifest_path().parent.mkdir(parents=True, exist_ok=True)
        local_manifest_path().write_bytes(path.read_bytes())
        load_manifest(path.parent / "weights.toml.base")
    else:
        load_manifest(path, local=False)


def read_dataset(folder: Path) -> list[str]:
    """Training's reader over a damaged dataset: every bad pair must become an issue line."""
    from sam_deblur_cli.train.data import dataset_masks, read_pairs

    images, issues = read_pairs(folder, variant="map", masks=dataset_masks)
    assert len(images) + len({i.name for i in issues}) >= 3, (images, issues)
    return [f"{issue.name}: {issue.reason}" for issue in issues]


def dataset_seeds() -> dict[str, bytes]:
    """One pair's files: blurred and sharp PNGs and the segmask PNG."""
    seeds = {"blur.png": _image_bytes("PNG"), "sharp.png": _image_bytes("PNG")}
    labels = np.zeros((64, 64), np.uint8)
    labels[10:40, 5:50] = 80
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(labels).save(buffer, format="PNG")
    seeds["mask.png"] = buffer.getvalue()
    return seeds


def damaged_dataset(folder: Path, seeds: dict[str, bytes], rng: random.Random) -> str:
    """Three pairs a, b, c under ``folder`` (input/, target/, input_mask/), pair b damaged:
    a file mutated, a partner missing, sizes that differ or an ambiguous stem."""
    for sub in ("input", "target", "input_mask"):
        (folder / sub).mkdir(parents=True)
    for stem in "abc":
        (folder / "input" / f"{stem}.png").write_bytes(seeds["blur.png"])
        (folder / "target" / f"{stem}.png").write_bytes(seeds["sharp.png"])
        (folder / "input_mask" / f"{stem}.png").write_bytes(seeds["mask.png"])
    how = rng.choice(["mutate", "mutate", "mutate", "missing", "size", "ambiguous"])
    sub = rng.choice(["input", "target", "input_mask"])
    victim = folder / sub / "b.png"
    if how == "mutate":
        label, data = mutate(victim.read_bytes(), rng)
        victim.write_bytes(data)
        return f"{sub}:{label}"
    if how == "missing":
        victim.unlink()
        return f"{sub}:missing"
    if how == "size":
        from PIL import Image

        with Image.open(victim) as image:
            image.resize((48, 64)).save(victim)
        return f"{sub}:size"
    (folder / sub / "b.jpg").write_bytes(_image_bytes("JPEG"))
    return f"{sub}:ambiguous"


KINDS: dict[str, tuple[Callable[[], dict[str, bytes]], Callable[[Path], Any]]] = {
    "image": (image_seeds, read_image),
    "mask": (mask_seeds, read_mask),
    "video": (video_seeds, read_video),
    "checkpoint": (checkpoint_seeds, read_checkpoint),
    "manifest": (manifest_seeds, read_manifest),
    "dataset": (dataset_seeds, read_dataset),
}


# --------------------------------------------------------------------------- the run


class _Hang(BaseException):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise _Hang


def cases(kind: str, count: int, seed: int, work: Path) -> Iterator[tuple[str, Path]]:
    """``count`` damaged files of ``kind`` (plus the giant headers for images), seeded."""
    rng = random.Random(f"{seed}-{kind}")
    make_seeds, _ = KINDS[kind]
    seeds = make_seeds()
    folder = work / kind
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "manifest":
        (folder / "weights.toml.base").write_bytes(seeds["weights.toml"])
    giants = giant_headers() if kind == "image" else {}
    if kind == "mask":
        giants = {"giant.png": giant_mask()}
    for name, data in giants.items():
        (folder / name).write_bytes(data)
        yield "giant-header", folder / name
    names = sorted(seeds)
    for index in range(count):
        if kind == "dataset":
            root = folder / f"{index:05d}"
            yield damaged_dataset(root, seeds, rng), root
            continue
        name = names[index % len(names)]
        label, data = mutate(seeds[name], rng)
        path = folder / f"{index:05d}-{name}"
        path.write_bytes(data)
        yield f"{name}:{label}", path


def run_case(reader: Callable[[Path], Any], path: Path) -> dict[str, Any]:
    from sam_deblur_cli.errors import SamDeblurError

    signal.setitimer(signal.ITIMER_REAL, CASE_LIMIT_S)
    start = time.perf_counter()
    try:
        lines = reader(path)
        outcome: dict[str, Any] = {"outcome": "ok"}
        if lines:  # what a reader reports instead of raising (a dataset's issues)
            outcome["issues"] = lines
    except SamDeblurError as exc:
        outcome = {"outcome": type(exc).__name__, "exit_code": exc.exit_code, "message": str(exc)}
    except _Hang:
        outcome = {"outcome": "hang"}
    except Exception:
        outcome = {"outcome": "crash", "message": traceback.format_exc()}
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    return {**outcome, "seconds": round(time.perf_counter() - start, 4)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20, help="damaged files per kind")
    parser.add_argument("--seed", type=int, default=23)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument(
        "--kinds", default=",".join(KINDS), help="KIND or KIND:COUNT, comma-separated"
    )
    args = parser.parse_args(argv)
    os.environ["MUTATIONS_WORK"] = str(args.work)
    signal.signal(signal.SIGALRM, _alarm)
    import logging

    logging.disable(logging.CRITICAL)  # the decoders' own warnings are not the subject
    for item in args.kinds.split(","):
        kind, _, count = item.partition(":")
        _, reader = KINDS[kind]
        runs = cases(kind, int(count or args.count), args.seed, args.work)
        for number, (mutation, path) in enumerate(runs):
            print(json.dumps({"start": f"{kind}:{number}:{mutation}"}), flush=True)
            result = run_case(reader, path)
            line = {"kind": kind, "case": number, "mutation": mutation, **result}
            print(json.dumps(line), flush=True)
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()


if __name__ == "__main__":
    main()
