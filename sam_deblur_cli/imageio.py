"""Image files in and out: orientation, ICC, EXIF, alpha, 8/16-bit, atomic writes. No torch.

Reading gives a :class:`Picture` whose ``rgb`` is display-ready (EXIF orientation applied) and
keeps everything a photographer expects back: the alpha channel, 8 or 16 bits per channel, the
ICC profile, the EXIF block (orientation reset to 1), the DPI, and whether it was grayscale.
Pixel values are kept as stored (no colour management), except CMYK, which is converted to RGB
through its embedded ICC profile (to sRGB, and the output is tagged sRGB) or, without a usable
profile, by Pillow's plain conversion (output untagged RGB).

Decoders: Pillow for 8-bit images; OpenCV for 16-bit PNG and TIFF, because Pillow silently
truncates 48/64-bit PNGs and TIFFs to 8 bits. HEIF/HEIC needs the optional ``pillow-heif``.
OpenCV cannot write ICC profiles or EXIF, so 16-bit PNGs get ``iCCP``/``pHYs``/``eXIf`` chunks
inserted after encoding and 16-bit TIFFs get an ICC tag; EXIF is not carried into 16-bit TIFFs,
and 8-bit TIFFs keep only its descriptive IFD0 tags (libtiff cannot write the Exif sub-IFD).
XMP and IPTC blocks are not carried. Multi-frame files (animated WebP/PNG, multi-page TIFF)
give their first frame, with a logged warning.

Safety: images above ``max_pixels`` (default :data:`DEFAULT_MAX_PIXELS`, 200 MP) are refused
from the header, before any pixel is decoded. Truncated files are refused, never padded.
Writes go to a temporary file in the destination folder, are fsynced and renamed into place,
so a failure leaves no partial output; a write over the picture's own input is refused.
"""

from __future__ import annotations

import io
import logging
import os
import struct
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

from sam_deblur_cli.errors import ImageReadError, ImageWriteError, UsageError
from sam_deblur_cli.files import atomic_file

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray
    from PIL import Image

logger = logging.getLogger(__name__)

#: Largest image read by default: a 16,000 x 12,500 panorama, whose float32 RGB copy alone
#: takes 2.4 GB. Above Pillow's own limit (179 MP), which read_image replaces with this one.
DEFAULT_MAX_PIXELS = 200_000_000

_FORMATS_BY_SUFFIX = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".jpe": "JPEG",
    ".png": "PNG",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".webp": "WEBP",
    ".bmp": "BMP",
    ".heic": "HEIF",
    ".heif": "HEIF",
    ".hif": "HEIF",
}
_FORMAT_ALIASES = {"JPG": "JPEG", "TIF": "TIFF", "HEIC": "HEIF"}
_SUFFIX_BY_FORMAT = {
    "JPEG": ".jpg",
    "PNG": ".png",
    "TIFF": ".tif",
    "WEBP": ".webp",
    "BMP": ".bmp",
    "HEIF": ".heic",
}

#: File suffixes (lower case, with the dot) that read_image and write_image handle.
SUPPORTED_SUFFIXES = frozenset(_FORMATS_BY_SUFFIX)

# Pillow format names we decode; MPO is what Pillow calls many camera JPEGs.
_READ_FORMATS = frozenset({"JPEG", "MPO", "PNG", "TIFF", "WEBP", "BMP", "HEIF"})
_SIXTEEN_BIT_FORMATS = frozenset({"PNG", "TIFF"})
# Pixel layouts each output format can store (8-bit); anything else is converted on write.
_WRITE_MODES = {
    "JPEG": ("L", "RGB"),
    "PNG": ("L", "LA", "RGB", "RGBA"),
    "TIFF": ("L", "LA", "RGB", "RGBA"),
    "WEBP": ("RGB", "RGBA"),
    "BMP": ("L", "RGB", "RGBA"),
    "HEIF": ("RGB", "RGBA"),
}
_ICC_SPACE_BY_MODE = {"L": b"GRAY", "LA": b"GRAY", "RGB": b"RGB ", "RGBA": b"RGB "}
_JPEG_MAX_EXIF = 65533  # one APP1 segment holds 65535 bytes, its length field included
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"})
_EXIF_PREFIX = b"Exif\x00\x00"
_ORIENTATION = 0x0112
# Descriptive TIFF tags (and the Exif/GPS sub-IFDs) worth carrying from a TIFF into EXIF.
_TIFF_TAGS_TO_EXIF = (0x010E, 0x010F, 0x0110, 0x0131, 0x0132, 0x013B, 0x8298)
_SUB_IFDS = (0x8769, 0x8825)

_HEIF_ADVICE = (
    "which needs the optional pillow-heif package; "
    "run `pip install pillow-heif` (or `pip install 'sam-deblur-cli[heif]'`)."
)
_PILLOW_LIMIT_LOCK = threading.Lock()
_heif_registered = False


@dataclass(frozen=True, eq=False)
class Picture:
    """A decoded image and what must survive the round trip to the output file.

    ``rgb``: H x W x 3 float32 RGB in [0, 1], values as stored (display-referred), EXIF
    orientation already applied. ``alpha``: H x W float32 in [0, 1] or None (straight, not
    premultiplied). ``bit_depth``: 8 or 16 bits per channel of the source. ``icc``: the ICC
    profile bytes or None. ``exif``: the EXIF block as an APP1 payload (starts with
    ``b"Exif\\0\\0"``) with orientation 1, or None. ``gray``: the source was grayscale, so
    the output is written as the luma of ``rgb``. ``dpi``: (x, y) or None. ``source_path``:
    the file it came from, which write_image refuses to overwrite.
    """

    rgb: NDArray[np.float32]
    alpha: NDArray[np.float32] | None = None
    bit_depth: Literal[8, 16] = 8
    icc: bytes | None = None
    exif: bytes | None = None
    source_format: str = "array"
    gray: bool = False
    dpi: tuple[float, float] | None = None
    source_path: Path | None = None

    def __post_init__(self) -> None:
        if self.rgb.ndim != 3 or self.rgb.shape[2] != 3:
            raise ValueError(f"Picture.rgb must be H x W x 3, got shape {self.rgb.shape}.")
        if self.alpha is not None and self.alpha.shape != self.rgb.shape[:2]:
            raise ValueError(f"Picture.alpha must be {self.rgb.shape[:2]}, got {self.alpha.shape}.")
        if self.bit_depth not in (8, 16):
            raise ValueError(f"Picture.bit_depth must be 8 or 16, got {self.bit_depth}.")

    @property
    def mode(self) -> str:
        """Pillow-style layout of the stored pixels: ``L``, ``LA``, ``RGB`` or ``RGBA``."""
        return ("L" if self.gray else "RGB") + ("A" if self.alpha is not None else "")

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])


# --------------------------------------------------------------------------- small helpers


def is_image_path(path: str | os.PathLike[str]) -> bool:
    """True if the file name has a suffix we read (by name only; the file is not opened).

    macOS resource-fork companions (``._IMG_1234.JPG`` on shared drives) are not images.
    """
    name = Path(path).name
    return Path(name).suffix.lower() in SUPPORTED_SUFFIXES and not name.startswith("._")


def output_format_for(path: str | os.PathLike[str], format: str | None = None) -> str:
    """The output format (``JPEG``, ``PNG``, ``TIFF``, ``WEBP``, ``BMP``, ``HEIF``).

    An explicit ``format`` (case-insensitive, ``jpg``/``tif``/``heic`` accepted) wins over the
    suffix of ``path``. Raises UsageError when neither names a format we write.
    """
    choices = "jpeg, png, tiff, webp, bmp, heif"
    if format:
        name = format.strip().lstrip(".").upper()
        name = _FORMAT_ALIASES.get(name, name)
        if name not in _WRITE_MODES:
            raise UsageError(f"Unknown output format {format!r}; choose one of {choices}.")
        return name
    suffix = Path(path).suffix.lower()
    if suffix not in _FORMATS_BY_SUFFIX:
        raise UsageError(
            f"Cannot tell the output format from {os.fspath(path)!r}; "
            f"end the name with one of {choices} or pass a format."
        )
    return _FORMATS_BY_SUFFIX[suffix]


def suffix_for_format(format: str) -> str:
    """The usual file suffix for an output format, e.g. ``JPEG`` -> ``.jpg``."""
    return _SUFFIX_BY_FORMAT[output_format_for("", format)]


def to_uint8(values: NDArray[Any]) -> NDArray[np.uint8]:
    """Float [0, 1] (any shape) -> uint8 [0, 255]: rounded, clamped, NaN -> 0."""
    return _quantize(values, 8)


def to_uint16(values: NDArray[Any]) -> NDArray[np.uint16]:
    """Float [0, 1] (any shape) -> uint16 [0, 65535]: rounded, clamped, NaN -> 0."""
    return _quantize(values, 16)


def _quantize(values: NDArray[Any], depth: int) -> NDArray[Any]:
    import numpy as np

    top = 255.0 if depth == 8 else 65535.0
    scaled = np.multiply(values, np.float32(top), dtype=np.float32)  # the one float copy
    np.fmax(scaled, np.float32(0.0), out=scaled)  # fmax, unlike clip, also turns NaN into 0
    np.fmin(scaled, np.float32(top), out=scaled)
    return np.rint(scaled, out=scaled).astype(np.uint8 if depth == 8 else np.uint16)


def picture_with(rgb: NDArray[Any], like: Picture) -> Picture:
    """``like`` with new pixels: H x W x 3 float RGB in [0, 1] (the restored image).

    Alpha, bit depth, ICC, EXIF, DPI, grayscale and the source path are kept, so the output
    file is written the way the input was stored. Values outside [0, 1] are clamped on write.
    """
    import numpy as np

    new = np.asarray(rgb, dtype=np.float32)
    if new.shape != like.rgb.shape:
        raise ValueError(f"Restored image is {new.shape}, the original is {like.rgb.shape}.")
    return replace(like, rgb=new)


# --------------------------------------------------------------------------------- reading


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
    if _looks_like_heif(data) and not _register_heif():
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


def _read_bytes(src: Path) -> bytes:
    try:
        if src.is_dir():
            raise ImageReadError(f"{src}: is a folder, not an image file.")
        data = src.read_bytes()
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


def _register_heif() -> bool:
    """Register pillow-heif's opener on first need; False if that optional package is missing."""
    global _heif_registered
    if not _heif_registered:
        try:
            import pillow_heif
        except ImportError:
            return False
        pillow_heif.register_heif_opener()
        _heif_registered = True
    return True


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


def _check_header(src: Path, im: Image.Image, max_pixels: int | None) -> None:
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
        raise ImageReadError(
            f"{src}: {width} x {height} pixels ({width * height / 1e6:.1f} MP) is above the "
            f"{max_pixels / 1e6:g} MP safety limit; if you trust this file, raise the limit "
            f"with --max-pixels {width * height} (max_pixels= in Python)."
        )
    frames = getattr(im, "n_frames", 1)
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


def _orient(planes: NDArray[Any], orientation: int) -> NDArray[Any]:
    """Apply EXIF orientation to H x W x C planes (the transforms of Pillow's exif_transpose)."""
    if orientation in (5, 6, 7, 8):
        planes = planes.swapaxes(0, 1)  # 5: transpose; the others add a flip to it
    if orientation in (2, 3, 6, 7):
        planes = planes[:, ::-1]
    if orientation in (3, 4, 7, 8):
        planes = planes[::-1]
    return planes  # a view: the float conversion that follows makes the one copy


def _dpi(im: Image.Image, orientation: int) -> tuple[float, float] | None:
    dpi = im.info.get("dpi")
    if not dpi or len(dpi) != 2 or not all(float(d) > 0 for d in dpi):
        return None
    x, y = float(dpi[0]), float(dpi[1])
    return (y, x) if orientation in (5, 6, 7, 8) else (x, y)


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


# --------------------------------------------------------------------------------- writing


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
    if fmt == "HEIF" and not _register_heif():
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
