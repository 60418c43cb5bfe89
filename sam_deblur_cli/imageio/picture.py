"""The decoded image (:class:`Picture`) and float <-> integer pixel conversions."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray


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
