"""Metadata byte surgery: EXIF orientation, ICC fit, DPI, PNG chunks, the TIFF ICC tag.

Byte-level where the encoders cannot be told (OpenCV writes no metadata; Pillow's EXIF
rewrite would lose maker notes), so every other tag survives exactly.
"""

from __future__ import annotations

import logging
import struct
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

from sam_deblur_cli.errors import ImageWriteError

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger(__name__)


_ICC_SPACE_BY_MODE = {"L": b"GRAY", "LA": b"GRAY", "RGB": b"RGB ", "RGBA": b"RGB "}
_JPEG_MAX_EXIF = 65533  # one APP1 segment holds 65535 bytes, its length field included
_EXIF_PREFIX = b"Exif\x00\x00"
_ORIENTATION = 0x0112
# Descriptive TIFF tags (and the Exif/GPS sub-IFDs) worth carrying from a TIFF into EXIF.
_TIFF_TAGS_TO_EXIF = (0x010E, 0x010F, 0x0110, 0x0131, 0x0132, 0x013B, 0x8298)
_SUB_IFDS = (0x8769, 0x8825)


def _orientation_and_exif(src: Path, im: Image.Image, data: bytes) -> tuple[int, bytes | None]:
    """(EXIF orientation 1..8 of the stored pixels, EXIF block to carry with orientation 1)."""
    from PIL import Image

    if im.format == "PNG" and "exif" not in im.info and b"eXIf" not in data:
        return 1, None  # spare Pillow a full 8-bit decode looking for a late eXIf chunk
    tags = im.getexif()
    orientation = tags.get(_ORIENTATION, 1)
    orientation = orientation if orientation in range(1, 9) else 1
    if im.format == "TIFF":
        # TIFF tags describe the file's own layout; keep only the descriptive ones.
        carried = Image.Exif()
        for tag in _TIFF_TAGS_TO_EXIF:
            if tag in tags:
                carried[tag] = tags[tag]
        for ifd in _SUB_IFDS:
            if tags.get_ifd(ifd):
                carried[ifd] = tags.get_ifd(ifd)
        return orientation, carried.tobytes() if len(carried) else None
    raw = im.info.get("exif")
    if not raw:
        return orientation, None
    exif = _exif_orientation_reset(raw if raw.startswith(_EXIF_PREFIX) else _EXIF_PREFIX + raw)
    if exif is None:
        logger.warning("%s: its EXIF block is malformed; it is not carried to the output.", src)
    return orientation, exif


def _exif_orientation_reset(exif: bytes) -> bytes | None:
    """Patch the EXIF block in place: orientation 1, no IFD1 (its thumbnail is the old image).

    Byte-level so that every other tag, maker notes included, survives exactly.
    Returns None when the block is too malformed to patch safely (viewers would turn the
    already turned pixels a second time).
    """
    body = bytearray(exif[len(_EXIF_PREFIX) :])
    order = {b"II": "<", b"MM": ">"}.get(bytes(body[:2]))
    if order is None or len(body) < 8:
        return None
    try:
        (ifd0,) = struct.unpack_from(order + "I", body, 4)
        (count,) = struct.unpack_from(order + "H", body, ifd0)
        for entry in range(ifd0 + 2, ifd0 + 2 + 12 * count, 12):
            tag, kind, n = struct.unpack_from(order + "HHI", body, entry)
            if tag == _ORIENTATION:
                if n != 1 or kind not in (3, 4):  # SHORT as the standard says; LONG seen too
                    return None
                struct.pack_into(order + ("H" if kind == 3 else "I"), body, entry + 8, 1)
        struct.pack_into(order + "I", body, ifd0 + 2 + 12 * count, 0)
    except struct.error:
        return None
    return _EXIF_PREFIX + bytes(body)


def _dpi(im: Image.Image, orientation: int) -> tuple[float, float] | None:
    dpi = im.info.get("dpi")
    if not dpi or len(dpi) != 2 or not all(float(d) > 0 for d in dpi):
        return None
    x, y = float(dpi[0]), float(dpi[1])
    return (y, x) if orientation in (5, 6, 7, 8) else (x, y)


def _fitting_icc(dst: Path, icc: bytes | None, mode: str) -> bytes | None:
    """The profile, unless its colour space (header bytes 16..20) contradicts ``mode``."""
    if not icc:
        return None
    if icc[16:20] != _ICC_SPACE_BY_MODE[mode]:
        space = icc[16:20].decode("latin-1").strip()
        logger.warning(
            "%s: the %s colour profile does not fit %s pixels; not embedded.", dst, space, mode
        )
        return None
    return icc


def _fitting_exif(dst: Path, exif: bytes | None, fmt: str, depth: int) -> bytes | None:
    if not exif or fmt == "BMP" or (fmt == "TIFF" and depth == 16):
        return None
    patched = _exif_orientation_reset(
        exif if exif.startswith(_EXIF_PREFIX) else _EXIF_PREFIX + exif
    )
    if patched is not None and fmt == "JPEG" and len(patched) > _JPEG_MAX_EXIF:
        logger.warning(
            "%s: the EXIF block (%d bytes) is too big for JPEG; not carried.", dst, len(patched)
        )
        return None
    return patched


def _exif_for_tiff(exif: bytes | None) -> Image.Exif | None:
    """The descriptive IFD0 tags only: libtiff, which compresses for Pillow, cannot write the
    Exif and GPS sub-IFDs, so those (capture settings, location) stay out of TIFF outputs."""
    from PIL import Image

    if not exif:
        return None
    tags, kept = Image.Exif(), Image.Exif()
    tags.load(exif)
    for tag in _TIFF_TAGS_TO_EXIF:
        if tag in tags:
            kept[tag] = tags[tag]
    return kept if len(kept) else None


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload)
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def _png_with_chunks(
    png: bytes, icc: bytes | None, exif: bytes | None, dpi: tuple[float, float] | None
) -> bytes:
    """Insert iCCP (zlib profile), pHYs (pixels per metre) and eXIf chunks right after IHDR."""
    ihdr_end = 8 + 8 + 13 + 4  # signature, length + type, IHDR data, CRC
    if png[12:16] != b"IHDR":
        raise ImageWriteError(
            "OpenCV wrote a PNG without a leading IHDR chunk; cannot add metadata."
        )
    chunks = b""
    if icc:
        chunks += _png_chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc))
    if dpi:
        per_metre = [round(d / 0.0254) for d in dpi]
        chunks += _png_chunk(b"pHYs", struct.pack(">IIB", *per_metre, 1))
    if exif:
        chunks += _png_chunk(b"eXIf", exif[len(_EXIF_PREFIX) :])
    return png[:ihdr_end] + chunks + png[ihdr_end:]


def _tiff_with_icc(tiff: bytes, icc: bytes) -> bytes:
    """Add an ICC profile tag (34675) to IFD0 of a classic TIFF.

    The profile and a rewritten IFD0 (entries kept in tag order) are appended and the header
    is pointed at the new IFD; strip offsets stay valid because nothing before moves.
    """
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None or struct.unpack_from(order + "H", tiff, 2)[0] != 42:
        logger.warning("Not a classic TIFF (BigTIFF?); the ICC profile is not embedded.")
        return tiff
    (ifd0,) = struct.unpack_from(order + "I", tiff, 4)
    (count,) = struct.unpack_from(order + "H", tiff, ifd0)
    entries = [tiff[ifd0 + 2 + 12 * i : ifd0 + 14 + 12 * i] for i in range(count)]
    (next_ifd,) = struct.unpack_from(order + "I", tiff, ifd0 + 2 + 12 * count)
    out = bytearray(tiff)
    out += b"\x00" * (len(out) % 2)  # TIFF offsets are word-aligned
    icc_offset = len(out)
    out += icc + b"\x00" * (len(icc) % 2)
    entries = [e for e in entries if struct.unpack_from(order + "H", e)[0] != 34675]
    entries.append(struct.pack(order + "HHII", 34675, 7, len(icc), icc_offset))
    entries.sort(key=lambda e: struct.unpack_from(order + "H", e)[0])
    new_ifd = len(out)
    out += struct.pack(order + "H", len(entries)) + b"".join(entries)
    out += struct.pack(order + "I", next_ifd)
    struct.pack_into(order + "I", out, 4, new_ifd)
    return bytes(out)
