"""Encoding a :class:`Picture` into an image file, atomically (``files.atomic_file``)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from sam_deblur_cli.errors import ImageWriteError, UsageError
from sam_deblur_cli.files import atomic_file
from sam_deblur_cli.imageio.formats import (
    _HEIF_ADVICE,
    _SIXTEEN_BIT_FORMATS,
    _WRITE_MODES,
    _heif_support,
    output_format_for,
)
from sam_deblur_cli.imageio.metadata import (
    _EXIF_PREFIX,
    _exif_for_tiff,
    _fitting_exif,
    _fitting_icc,
    _png_with_chunks,
    _tiff_with_icc,
)
from sam_deblur_cli.imageio.picture import Picture, _quantize

if TYPE_CHECKING:
    from numpy.typing import NDArray

logger = logging.getLogger(__name__)


def write_image(
    path: str | os.PathLike[str],
    picture: Picture,
    *,
    format: str | None = None,
    quality: int = 95,
    lossless: bool = False,
    png_compression: int = 6,
    protect: Iterable[str | os.PathLike[str]] = (),
) -> Path:
    """Write ``picture`` atomically to ``path`` and return the path.

    Format from ``format`` or the suffix (see output_format_for). ``quality`` 1..100 for JPEG
    (4:4:4 chroma), WebP and HEIF; ``lossless`` for WebP; ``png_compression`` 0..9 (zlib).
    Depth, alpha, grayscale, ICC, EXIF (orientation 1) and DPI are kept where the format can
    hold them; what it cannot is dropped with a logged warning. Refuses, with ImageWriteError,
    to replace ``picture.source_path`` or any ``protect`` path. Parent folders are created.
    """
    dst = Path(path)
    fmt = output_format_for(dst, format)
    if not 1 <= quality <= 100 or not 0 <= png_compression <= 9:
        raise UsageError(f"Quality must be 1..100 (got {quality}), PNG compression 0..9.")
    _refuse_inputs(dst, [p for p in (picture.source_path, *protect) if p is not None])
    if fmt == "HEIF" and not _heif_support():
        raise ImageWriteError(f"{dst}: HEIF output {_HEIF_ADVICE}")
    mode, depth = _output_layout(dst, picture, fmt)
    planes = _output_planes(picture, mode, depth)
    icc = _fitting_icc(dst, picture.icc, mode)
    exif = _fitting_exif(dst, picture.exif, fmt, depth)
    if depth == 16:
        data = _encode_sixteen_bit(dst, planes, fmt, icc, exif, picture.dpi, png_compression)
        _write_atomically(dst, lambda f: f.write(data))
    else:
        options = _pillow_options(fmt, icc, exif, picture.dpi, quality, lossless, png_compression)
        _write_atomically(dst, lambda f: _save_with_pillow(planes, fmt, f, options))
    return dst


def _refuse_inputs(dst: Path, inputs: Iterable[str | os.PathLike[str]]) -> None:
    if dst.is_dir():
        raise ImageWriteError(f"{dst}: is a folder; give an output file name.")
    for src in map(Path, inputs):
        same = dst.resolve() == src.resolve()
        if not same and dst.exists() and src.exists():
            same = os.path.samefile(dst, src)  # hard links and other aliases
        if same:
            raise ImageWriteError(
                f"{dst}: is the input {src}; inputs are never overwritten, choose another output."
            )


def _output_layout(dst: Path, picture: Picture, fmt: str) -> tuple[str, int]:
    """(L/LA/RGB/RGBA, 8|16) that ``fmt`` will store for this picture."""
    depth = 16 if picture.bit_depth == 16 and fmt in _SIXTEEN_BIT_FORMATS else 8
    if depth < picture.bit_depth:
        logger.warning("%s: %s stores 8 bits per channel; the 16-bit image is reduced.", dst, fmt)
    mode = picture.mode
    allowed = _WRITE_MODES[fmt]
    if "A" in mode and not any("A" in m for m in allowed):
        logger.warning("%s: %s has no transparency; the alpha channel is dropped.", dst, fmt)
        mode = mode[:-1]
    if mode == "LA" and depth == 16:
        mode = "RGBA"  # OpenCV writes no 16-bit gray + alpha; gray RGBA looks the same
    if mode not in allowed:
        mode = "RGBA" if "A" in mode else "RGB"
    return mode, depth


def _output_planes(picture: Picture, mode: str, depth: int) -> NDArray[Any]:
    """H x W x C uint8/uint16 planes in ``mode`` order; gray is the Rec. 601 luma of rgb."""
    import numpy as np

    color = np.asarray(picture.rgb, dtype=np.float32)
    if picture.gray:
        # Rec. 601 weights, as Pillow's "L"; a gray source stored as RGB (WebP) stays neutral.
        luma = (color @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[:, :, None]
        color = luma if mode.startswith("L") else np.repeat(luma, 3, axis=2)
    quantized = _quantize(color, depth)
    if "A" not in mode:
        return quantized
    assert picture.alpha is not None  # mode has A only when the picture has alpha
    return np.concatenate([quantized, _quantize(picture.alpha, depth)[:, :, None]], axis=2)


def _pillow_options(
    fmt: str,
    icc: bytes | None,
    exif: bytes | None,
    dpi: tuple[float, float] | None,
    quality: int,
    lossless: bool,
    png_compression: int,
) -> dict[str, Any]:
    """Keyword arguments for Pillow's ``save`` (EXIF for WebP/PNG without the APP1 prefix)."""
    options: dict[str, Any] = {"icc_profile": icc, "exif": exif, "dpi": dpi}
    if fmt in ("WEBP", "PNG") and exif:
        options["exif"] = exif[len(_EXIF_PREFIX) :]
    if fmt == "JPEG":
        options.update(quality=quality, subsampling=0, optimize=True)
    elif fmt == "PNG":
        options.update(compress_level=png_compression)
    elif fmt == "TIFF":
        options.update(compression="tiff_adobe_deflate", exif=_exif_for_tiff(exif))
    elif fmt == "WEBP":
        # exact: keep the RGB under transparent pixels instead of letting libwebp blank it.
        options.update(quality=quality, lossless=lossless, exact=True, method=4)
    elif fmt == "HEIF":
        options.update(quality=quality)
    return {key: value for key, value in options.items() if value is not None}


def _save_with_pillow(
    planes: NDArray[Any], fmt: str, file: BinaryIO, options: dict[str, Any]
) -> None:
    from PIL import Image

    image = Image.fromarray(planes[:, :, 0] if planes.shape[2] == 1 else planes)
    image.save(file, format=fmt, **options)


def _encode_sixteen_bit(
    dst: Path,
    planes: NDArray[Any],
    fmt: str,
    icc: bytes | None,
    exif: bytes | None,
    dpi: tuple[float, float] | None,
    png_compression: int,
) -> bytes:
    """uint16 L/RGB/RGBA planes -> PNG or TIFF bytes via OpenCV, metadata spliced in after."""
    import cv2

    order = {1: [0], 3: [2, 1, 0], 4: [2, 1, 0, 3]}[planes.shape[2]]
    array = planes[:, :, order].copy()
    if fmt == "PNG":
        params = [cv2.IMWRITE_PNG_COMPRESSION, png_compression]
    else:
        params = [cv2.IMWRITE_TIFF_COMPRESSION, 8]  # Adobe deflate, lossless
        if dpi:
            params += [cv2.IMWRITE_TIFF_RESUNIT, 2, cv2.IMWRITE_TIFF_XDPI, round(dpi[0])]
            params += [cv2.IMWRITE_TIFF_YDPI, round(dpi[1])]
    try:
        ok, buffer = cv2.imencode(".png" if fmt == "PNG" else ".tif", array, params)
    except cv2.error as exc:
        raise ImageWriteError(f"{dst}: OpenCV could not encode it ({exc}).") from exc
    if not ok:
        raise ImageWriteError(f"{dst}: OpenCV could not encode a 16-bit {fmt}.")
    data = buffer.tobytes()
    if fmt == "PNG":
        return _png_with_chunks(data, icc, exif, dpi)
    return _tiff_with_icc(data, icc) if icc else data


def _write_atomically(dst: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Write ``dst`` through ``files.atomic_file``; its folder is created first.

    On any failure (Ctrl-C included) an existing ``dst`` is untouched. OSError and encoder
    ValueError become ImageWriteError.
    """
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ImageWriteError(f"{dst}: cannot create its folder ({exc.strerror or exc}).") from exc
    try:
        with atomic_file(dst) as file:
            write(file)
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ImageWriteError(
            f"{dst}: could not be written ({reason}); check free space and permissions."
        ) from exc
