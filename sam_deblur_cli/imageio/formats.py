"""Image formats by name and suffix: what we read, what we write and in which pixel layouts."""

from __future__ import annotations

import os
from pathlib import Path

from sam_deblur_cli.errors import UsageError

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
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"})
_HEIF_ADVICE = (
    "which needs the optional pillow-heif package; "
    "run `pip install pillow-heif` (or `pip install 'sam-deblur-cli[heif]'`)."
)


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


_heif_registered = False


def _heif_support() -> bool:
    """Whether HEIF can be read and written: pillow-heif's opener, registered on first need
    (False when that optional package is missing). Tests reset ``_heif_registered``."""
    global _heif_registered
    if not _heif_registered:
        try:
            import pillow_heif
        except ImportError:
            return False
        pillow_heif.register_heif_opener()
        _heif_registered = True
    return True
