"""The mask cache: SAM runs once per image, SAM weights, recipe and generator.

Running the same photo again (another model with the same recipe, TLC on or off, a
different output format) reads the segmask back instead of running SAM. An entry lives in
``<cache_root()>/masks/<key[:2]>/`` as ``<key>.png`` (the segmask, 8-bit gray) and
``<key>.json`` (``count``, ``shape``, ``version``), the JSON written last so that it marks a
complete entry (two processes may fill one entry at once: each file is replaced whole).
The key is a sha256 over the decoded pixels (not the file: a re-saved or renamed photo
still hits) and everything that shapes the masks. A corrupt entry is ignored and rewritten;
a cache that cannot be written (a full disk included) only costs speed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sam_deblur_cli.amg import effective_amg
from sam_deblur_cli.errors import ImageWriteError, MaskError, OutOfSpaceError
from sam_deblur_cli.files import remove_stale_temporaries, write_bytes
from sam_deblur_cli.masks.formats import read_segmask_png, write_segmask_png

if TYPE_CHECKING:
    from sam_deblur_cli.masks.result import MaskResult

logger = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when the stored encoding or the key's meaning changes


def image_digest(rgb_uint8: np.ndarray) -> str:
    """sha256 of an image's decoded pixels, its shape and dtype (layout independent)."""
    digest = hashlib.sha256(f"{rgb_uint8.dtype.str}{rgb_uint8.shape}".encode())
    digest.update(np.ascontiguousarray(rgb_uint8).data)
    return digest.hexdigest()


def cache_key(
    rgb_uint8: np.ndarray,
    *,
    sam_name: str,
    sam_sha256: str,
    channel_order: str,
    amg: Mapping[str, float | int],
    generator: str,
    sam_precision: str = "fp32",
) -> str:
    """The key of one image's masks: pixels, SAM entry and weights, recipe, generator kind,
    SAM's precision (fp32 adds nothing, so keys made before the option still hit).

    ``rgb_uint8`` is the image before the channel order is applied; ``channel_order`` is
    part of the key. AMG parameters are compared with defaults filled in.
    """
    description = {
        "version": CACHE_VERSION,
        "image": image_digest(rgb_uint8),
        "sam": sam_name,
        "sam_sha256": sam_sha256,
        "channel_order": channel_order,
        "amg": effective_amg(amg),
        "generator": generator,
    }
    if sam_precision != "fp32":
        description["sam_precision"] = sam_precision
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()


class MaskCache:
    """Segmasks by cache key under ``root`` (default ``<weights.cache_root()>/masks``)."""

    def __init__(self, root: str | Path | None = None) -> None:
        if root is None:
            from sam_deblur_cli.weights import cache_root

            root = cache_root() / "masks"
        self.root = Path(root)

    def _paths(self, key: str) -> tuple[Path, Path]:
        folder = self.root / key[:2]
        return folder / f"{key}.png", folder / f"{key}.json"

    def get(self, key: str, shape: tuple[int, int]) -> MaskResult | None:
        """The cached masks of an image of ``shape`` (H, W), or None (missing or corrupt)."""
        from sam_deblur_cli.masks.result import result_from_segmask

        png, meta = self._paths(key)
        if not meta.is_file():
            return None
        try:
            info = json.loads(meta.read_text())
            count = int(info["count"])
            if info.get("version") != CACHE_VERSION or tuple(info["shape"]) != tuple(shape):
                raise ValueError(f"version/shape {info.get('version')}/{info['shape']}")
            segmask = read_segmask_png(png)
            if segmask.shape != tuple(shape):
                raise ValueError(f"segmask shape {segmask.shape}")
        except (OSError, ValueError, KeyError, TypeError, MaskError) as exc:
            logger.warning("ignoring a damaged mask cache entry %s (%s)", meta, exc)
            for path in (meta, png):
                path.unlink(missing_ok=True)
            return None
        logger.debug("mask cache hit %s", key)
        return result_from_segmask(segmask, count)

    def put(self, key: str, segmask: np.ndarray, count: int) -> None:
        """Store a segmask (uint8 H x W) and its mask count; failures are logged, not raised."""
        png, meta = self._paths(key)
        info: dict[str, Any] = {
            "version": CACHE_VERSION,
            "count": int(count),
            "shape": [int(v) for v in segmask.shape],
        }
        text = json.dumps(info).encode()
        try:
            png.parent.mkdir(parents=True, exist_ok=True)
            # Two processes filling one entry write the same bytes, each file renamed into
            # place whole: a reader sees the old file or the new, never a torn one.
            remove_stale_temporaries(png.parent)  # a killed writer's
            write_segmask_png(png, segmask, compress_level=1)  # speed over size
            write_bytes(meta, text)
        except (OSError, ImageWriteError, OutOfSpaceError) as exc:  # only costs speed later
            logger.warning("could not write the mask cache entry %s (%s)", meta, exc)
