"""A corpus of broken image inputs, shared by the imageio, pipeline and CLI tests.

``write_broken_inputs(folder)`` writes one file (or folder, or absent path) per kind of
breakage and returns ``{kind: path}``. Every path must make ``read_image`` raise
ImageReadError; the broken files are cut from a real photo (``skimage.data.chelsea``).
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

__all__ = ["png_bytes", "write_broken_inputs"]

_HEIC_FTYP = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic"  # an iPhone photo's first box


def _chunk(kind: bytes, payload: bytes) -> bytes:
    crc = struct.pack(">I", zlib.crc32(kind + payload))
    return struct.pack(">I", len(payload)) + kind + payload + crc


def png_bytes(
    pixels: np.ndarray,
    color_type: int,
    *,
    size: tuple[int, int] | None = None,
    chunks: tuple[tuple[bytes, bytes], ...] = (),
) -> bytes:
    """A minimal PNG written by hand (filter 0), for layouts no library writes for us.

    ``pixels``: H x W x C uint8 or uint16 (bit depth follows the dtype), stored as given.
    ``color_type``: PNG colour type (0 gray, 2 RGB, 4 gray + alpha, 6 RGBA).
    ``size``: (width, height) to claim in IHDR instead of the real one (for broken headers).
    ``chunks``: extra (type, payload) chunks placed after IHDR, e.g. ``(b"eXIf", tiff)``.
    """
    height, width = pixels.shape[:2]
    depth = 16 if pixels.dtype == np.uint16 else 8
    raw = pixels.astype(">u2" if depth == 16 else np.uint8).reshape(height, -1).view(np.uint8)
    rows = np.hstack([np.zeros((height, 1), np.uint8), raw]).tobytes()
    claimed_width, claimed_height = size or (width, height)
    header = struct.pack(">IIBBBBB", claimed_width, claimed_height, depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + b"".join(_chunk(kind, payload) for kind, payload in chunks)
        + _chunk(b"IDAT", zlib.compress(rows))
        + _chunk(b"IEND", b"")
    )


def _encoded(pixels: np.ndarray, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _noise(n: int) -> bytes:
    return np.random.default_rng(n).bytes(n)  # seeded: the corpus is the same on every run


def write_broken_inputs(folder: Path) -> dict[str, Path]:
    """Write the corpus into ``folder`` (created) and return ``{kind: path}``.

    Kinds: empty, text_as_jpeg, truncated_jpeg, truncated_png, truncated_png16, bad_crc_png,
    garbage_after_jpeg_header, zero_width_png, bomb_png, unsupported_gif, broken_heic,
    folder_named_png, missing, and permission_denied (only when not running as root, where
    file permissions cannot deny a read).
    """
    folder.mkdir(parents=True, exist_ok=True)
    photo = data.chelsea()[::4, ::4].copy()  # 75 x 113 RGB
    jpeg = _encoded(photo, "JPEG", quality=90)
    png = _encoded(photo, "PNG")
    png16 = png_bytes(photo.astype(np.uint16) * 257, 2)
    bad_crc = bytearray(png)
    bad_crc[29] ^= 0xFF  # first byte of the IHDR CRC
    contents: dict[str, tuple[str, bytes]] = {
        "empty": ("empty.jpg", b""),
        "text_as_jpeg": ("notes.jpg", b"These are my holiday notes, not a photo.\n" * 20),
        "truncated_jpeg": ("truncated.jpg", jpeg[: len(jpeg) // 2]),
        "truncated_png": ("truncated.png", png[: len(png) // 2]),
        "truncated_png16": ("truncated16.png", png16[: len(png16) // 2]),
        "bad_crc_png": ("bad_crc.png", bytes(bad_crc)),
        "garbage_after_jpeg_header": ("garbage.jpg", jpeg[:2] + _noise(4096)),
        "zero_width_png": ("zero_width.png", png_bytes(photo[:, :0], 2, size=(0, 75))),
        "bomb_png": ("bomb.png", png_bytes(photo[:1, :1], 2, size=(50_000, 50_000))),
        "unsupported_gif": ("animation.gif", _encoded(photo, "GIF")),
        "broken_heic": ("phone.heic", _HEIC_FTYP + _noise(256)),
    }
    paths = {}
    for kind, (name, payload) in contents.items():
        paths[kind] = folder / name
        paths[kind].write_bytes(payload)
    paths["folder_named_png"] = folder / "album.png"
    paths["folder_named_png"].mkdir(exist_ok=True)
    paths["missing"] = folder / "never_written.jpg"
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        paths["permission_denied"] = folder / "locked.jpg"
        paths["permission_denied"].write_bytes(jpeg)
        paths["permission_denied"].chmod(0)
    return paths
