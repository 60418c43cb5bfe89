"""Decoding image files into a :class:`Picture`: header checks, 8/16-bit decoders, orientation.

Every failure, from a missing file to a damaged PNG chunk, becomes one ImageReadError line.
"""

from __future__ import annotations

import io
import logging
import os
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

from sam_deblur_cli.errors import ImageReadError, PixelLimitError, UsageError
from sam_deblur_cli.imageio.formats import _HEIF_ADVICE, _HEIF_BRANDS, _READ_FORMATS, _heif_support
from sam_deblur_cli.imageio.metadata import _dpi, _orientation_and_exif
from sam_deblur_cli.imageio.picture import Picture

if TYPE_CHECKING:
    from numpy.typing import NDArray
    from PIL import Image

logger = logging.getLogger(__name__)


#: Largest image read by default: a 16,000 x 12,500 panorama, whose float32 RGB copy alone
#: takes 2.4 GB. Above Pillow's own limit (179 MP), which read_image replaces with this one.
DEFAULT_MAX_PIXELS = 200_000_000
_PILLOW_LIMIT_LOCK = threading.Lock()


def read_image(
    path: str | os.PathLike[str], *, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> Picture:
    """Decode an image file into a :class:`Picture` (see its docstring for the layout).

    ``max_pixels`` (None: no limit) is checked from the header before decoding. Every failure,
    from a missing file to a damaged PNG chunk, raises ImageReadError with one line naming the
    file and the reason. The file is only read, never modified.
    """
    if max_pixels is not None and max_pixels < 1:
        raise UsageError(f"max_pixels must be a positive number of pixels, not {max_pixels}.")
    src = Path(path)
    data = _read_bytes(src)
    if _looks_like_heif(data) and not _heif_support():
        raise ImageReadError(f"{src}: is a HEIF/HEIC image, {_HEIF_ADVICE}")
    im = _open_header(src, data)
    _check_header(src, im, max_pixels)
    big = im.width * im.height > _pillow_limit()
    with _decoder_errors(src), _pillow_limit_lifted() if big else nullcontext():
        if _is_sixteen_bit(src, im, data):
            planes, gray = _decode_sixteen_bit(src, im, data), _sixteen_bit_gray(im, data)
            depth: Literal[8, 16] = 16
            icc = im.info.get("icc_profile")
        else:
            planes, gray, icc = _decode_eight_bit(src, im)
            depth = 8
        orientation, exif = _orientation_and_exif(src, im, data)
    meta = {"icc": icc or None, "exif": exif, "dpi": _dpi(im, orientation), "source_path": src}
    planes = _orient(planes, orientation)
    return _picture_from_planes(planes, gray, depth, source_format=_format_name(im), **meta)


#: Bytes read by read_header first: PNG, WebP and JPEG headers (with their EXIF, ICC and XMP
#: segments) fit; a TIFF whose directory sits at the end falls back to the whole file.
_HEADER_BYTES = 1 << 20


def read_header(
    path: str | os.PathLike[str], *, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> tuple[int, int]:
    """Check that ``path`` is an image read_image would accept, decoding no pixels; returns
    (width, height) as stored. Raises the ImageReadError read_image would raise for a missing,
    empty, unidentifiable or over-limit file (damage inside the pixel data shows only when
    they are decoded). Usually reads the first MB only."""
    src = Path(path)
    head = _read_bytes(src, limit=_HEADER_BYTES)
    if _looks_like_heif(head) and not _heif_support():
        raise ImageReadError(f"{src}: is a HEIF/HEIC image, {_HEIF_ADVICE}")
    try:
        im = _open_header(src, head)
    except ImageReadError:
        if len(head) < _HEADER_BYTES:
            raise
        im = _open_header(src, _read_bytes(src))  # a header beyond the first MB (TIFF)
    _check_header(src, im, max_pixels, warn=False)  # read_image warns when it decodes
    return im.size


def _read_bytes(src: Path, *, limit: int | None = None) -> bytes:
    try:
        if src.is_dir():
            raise ImageReadError(f"{src}: is a folder, not an image file.")
        if limit is None:
            data = src.read_bytes()
        else:
            with src.open("rb") as f:
                data = f.read(limit)
    except FileNotFoundError:
        raise ImageReadError(f"{src}: no such file; check the path.") from None
    except PermissionError:
        raise ImageReadError(f"{src}: permission denied; check the file's permissions.") from None
    except OSError as exc:
        raise ImageReadError(f"{src}: could not be read ({exc.strerror or exc}).") from exc
    if not data:
        raise ImageReadError(f"{src}: the file is empty (0 bytes); copy or download it again.")
    return data


def _looks_like_heif(data: bytes) -> bool:
    return data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS


def _pillow_limit() -> float:
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    return float("inf") if limit is None else float(limit)


@contextmanager
def _pillow_limit_lifted() -> Iterator[None]:
    """Lift Pillow's process-wide pixel limit for a moment: read_image applies its own.

    Held only while Pillow parses a header (microseconds) or decodes an image that is over
    Pillow's limit but within ``max_pixels``; the lock keeps concurrent reads consistent.
    """
    from PIL import Image

    with _PILLOW_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


@contextmanager
def _decoder_errors(src: Path) -> Iterator[None]:
    """Turn whatever Pillow or OpenCV raise on damaged data into one ImageReadError line."""
    try:
        yield
    except ImageReadError:
        raise
    # The decoders raise an open-ended set of types on hostile or damaged bytes (OSError,
    # SyntaxError, struct.error, zlib.error, IndexError, cv2.error...); a user must never
    # see their tracebacks, only which file failed and why.
    except Exception as exc:
        raise ImageReadError(f"{src}: {_reason(exc)}") from exc


def _reason(exc: Exception) -> str:
    from PIL import UnidentifiedImageError

    text = " ".join(str(exc).split())
    if isinstance(exc, UnidentifiedImageError):
        return "not an image file we can identify (wrong extension or damaged); check the file."
    if isinstance(exc, _DamagedFile):
        return f"a damaged {exc.format} file ({text}); re-export it or copy it again."
    if isinstance(exc, MemoryError):
        return "not enough memory to decode it; lower --max-pixels or free memory."
    if "truncated" in text.lower() or isinstance(exc, EOFError):
        return "the file is truncated (incomplete copy or download?); copy or download it again."
    return f"the image data is damaged ({type(exc).__name__}: {text}); re-export the file."


class _DamagedFile(Exception):
    """A file whose signature names a format whose own parser then rejects it."""

    def __init__(self, format: str, cause: BaseException) -> None:
        super().__init__(" ".join(str(cause).split()) or type(cause).__name__)
        self.format = format


def _open_header(src: Path, data: bytes) -> Image.Image:
    """Parse the header only (no pixels yet)."""
    from PIL import Image, UnidentifiedImageError

    with _decoder_errors(src), _pillow_limit_lifted():
        try:
            return Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            _diagnose(data)
            raise


def _diagnose(data: bytes) -> None:
    """Pillow hides why its parsers refused a file; ask the one its signature names."""
    from PIL import BmpImagePlugin, JpegImagePlugin, PngImagePlugin, TiffImagePlugin

    parsers: dict[bytes, tuple[str, Callable[[BinaryIO], object]]] = {
        b"\x89PNG\r\n\x1a\n": ("PNG", PngImagePlugin.PngImageFile),
        b"\xff\xd8": ("JPEG", JpegImagePlugin.JpegImageFile),
        b"II*\x00": ("TIFF", TiffImagePlugin.TiffImageFile),
        b"MM\x00*": ("TIFF", TiffImagePlugin.TiffImageFile),
        b"BM": ("BMP", BmpImagePlugin.BmpImageFile),
    }
    if data.startswith(b"\x89PNG") and len(data) >= 24:
        width, height = struct.unpack_from(">II", data, 16)
        if width == 0 or height == 0:
            raise _DamagedFile("PNG", ValueError(f"its header says {width} x {height} pixels"))
    for signature, (name, parser) in parsers.items():
        if data.startswith(signature):
            try:
                parser(io.BytesIO(data))
            except Exception as exc:  # the decoder's own reason, whatever its type
                raise _DamagedFile(name, exc) from exc


def _check_header(src: Path, im: Image.Image, max_pixels: int | None, *, warn: bool = True) -> None:
    fmt = im.format or "unknown"
    if fmt not in _READ_FORMATS:
        raise ImageReadError(
            f"{src}: {fmt} images are not supported; convert it to PNG, JPEG, TIFF or WebP."
        )
    width, height = im.size
    if width <= 0 or height <= 0:
        raise ImageReadError(
            f"{src}: the header says {width} x {height} pixels; the file is damaged."
        )
    if max_pixels is not None and width * height > max_pixels:
        raise PixelLimitError(
            f"{src}: {width} x {height} pixels ({width * height / 1e6:.1f} MP) is above the "
            f"{max_pixels / 1e6:g} MP safety limit; if you trust this file, raise the limit "
            f"with --max-pixels {width * height} (max_pixels= in Python)."
        )
    frames = getattr(im, "n_frames", 1) if warn else 1  # counting may read the whole file
    if frames > 1 and im.format != "MPO":  # MPO: a camera JPEG with preview/depth frames
        logger.warning("%s has %d frames; only the first is used.", src, frames)


def _format_name(im: Image.Image) -> str:
    return "JPEG" if im.format == "MPO" else str(im.format)


def _is_sixteen_bit(src: Path, im: Image.Image, data: bytes) -> bool:
    if im.format == "PNG":
        return data[24] == 16  # IHDR bit depth, at a fixed offset after the signature
    if im.format != "TIFF":
        return False
    tags = _tiff_tags(im)
    widest = max(_as_tuple(tags.get(258, 1)))
    if widest <= 8:
        return False
    if widest > 16 or 3 in _as_tuple(tags.get(339, 1)):  # SampleFormat 3: floating point
        raise ImageReadError(
            f"{src}: {widest}-bit or floating-point TIFFs are not supported; "
            "save it as an 8- or 16-bit integer TIFF or PNG."
        )
    if tags.get(262) not in (1, 2):  # Photometric: BlackIsZero gray, RGB
        raise ImageReadError(
            f"{src}: only 16-bit RGB or grayscale TIFFs are supported; convert it to RGB."
        )
    return True


def _tiff_tags(im: Image.Image) -> dict[int, Any]:
    """TIFF tags by number (empty for other formats)."""
    return dict(getattr(im, "tag_v2", {}))


def _as_tuple(value: Any) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, tuple) else (int(value),)


def _sixteen_bit_gray(im: Image.Image, data: bytes) -> bool:
    if im.format == "PNG":
        return data[25] in (0, 4)  # IHDR colour type: gray, gray + alpha
    return bool(_tiff_tags(im).get(262) == 1)


def _decode_sixteen_bit(src: Path, im: Image.Image, data: bytes) -> NDArray[Any]:
    """16-bit PNG/TIFF via OpenCV -> H x W x C uint16, RGB(A) order (OpenCV gives BGR(A))."""
    import cv2
    import numpy as np

    _quiet_opencv()
    array = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise ImageReadError(
            f"{src}: the 16-bit {im.format} data is damaged or truncated; re-export the file."
        )
    if array.ndim == 2:
        return array[:, :, None]
    if array.shape[2] == 3:
        return array[:, :, ::-1]
    if array.shape[2] == 4:
        return array[:, :, [2, 1, 0, 3]]
    return array  # gray + alpha


def _quiet_opencv() -> None:
    """OpenCV prints its own warnings on damaged files; our ImageReadError says it once."""
    import cv2

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


def _decode_eight_bit(src: Path, im: Image.Image) -> tuple[NDArray[Any], bool, bytes | None]:
    """8-bit decode via Pillow -> (H x W x C uint8 L/LA/RGB/RGBA planes, gray, ICC)."""
    import numpy as np

    icc = im.info.get("icc_profile")
    im.load()
    if im.mode in ("I", "F", "I;16", "I;16B", "I;16L", "I;16N"):
        raise ImageReadError(
            f"{src}: {im.mode} ({'floating-point' if im.mode == 'F' else 'wide integer'}) "
            "pixels are not supported; save it as 8- or 16-bit PNG or TIFF."
        )
    if im.mode == "CMYK":
        im, icc = _cmyk_to_rgb(src, im)
    elif im.mode == "1":
        im = im.convert("L")
    elif im.mode in ("L", "RGB") and im.has_transparency_data:
        im = im.convert(im.mode + "A")  # a tRNS colour key becomes a real alpha channel
    elif im.mode not in ("L", "LA", "RGB", "RGBA"):
        # P, PA, YCbCr, RGBX, RGBa (premultiplied), La...: Pillow knows how to expand them.
        alpha = "A" in im.mode or im.has_transparency_data
        im = im.convert("LA" if im.mode == "La" else "RGBA" if alpha else "RGB")
    planes = np.asarray(im)
    return (planes[:, :, None] if planes.ndim == 2 else planes), im.mode in ("L", "LA"), icc


def _cmyk_to_rgb(src: Path, im: Image.Image) -> tuple[Image.Image, bytes | None]:
    """CMYK -> RGB through the embedded profile (to sRGB, tagged sRGB), else plainly (untagged)."""
    from PIL import ImageCms

    profile = im.info.get("icc_profile")
    if profile:
        try:
            srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
            source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
            rgb = ImageCms.profileToProfile(im, source, srgb, outputMode="RGB")
            if rgb is not None:
                return rgb, srgb.tobytes()
        except (ImageCms.PyCMSError, OSError, ValueError) as exc:
            logger.warning(
                "%s: its CMYK profile is unusable (%s); converting without it.", src, exc
            )
    return im.convert("RGB"), None


def _orient(planes: NDArray[Any], orientation: int) -> NDArray[Any]:
    """Apply EXIF orientation to H x W x C planes (the transforms of Pillow's exif_transpose)."""
    if orientation in (5, 6, 7, 8):
        planes = planes.swapaxes(0, 1)  # 5: transpose; the others add a flip to it
    if orientation in (2, 3, 6, 7):
        planes = planes[:, ::-1]
    if orientation in (3, 4, 7, 8):
        planes = planes[::-1]
    return planes  # a view: the float conversion that follows makes the one copy


def _picture_from_planes(
    planes: NDArray[Any], gray: bool, depth: Literal[8, 16], **meta: Any
) -> Picture:
    """H x W x C integer planes (L, LA, RGB, RGBA; gray sources may come as RGB(A)) -> Picture."""
    import numpy as np

    top = np.float32(255.0 if depth == 8 else 65535.0)
    channels = planes.shape[2]
    color = planes[:, :, :1] if gray else planes[:, :, :3]
    rgb = np.empty((*planes.shape[:2], 3), dtype=np.float32)
    np.divide(color, top, out=rgb, dtype=np.float32, casting="unsafe")
    alpha = None
    if channels in (2, 4):
        alpha = np.divide(planes[:, :, -1], top, dtype=np.float32)
    return Picture(rgb=rgb, alpha=alpha, bit_depth=depth, gray=gray, **meta)
