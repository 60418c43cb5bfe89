"""Decode a video's frames, in display order, with their timestamps.

Frames come out as RGB arrays in display orientation (the stream's rotation applied), uint8
for 8-bit sources and uint16 (full 16-bit range) for deeper ones, so that deblurring a frame
is deblurring what a viewer sees; ``write`` turns them back before encoding. A tagged source
is turned into RGB with its own matrix and range (BT.709, full range, ...), and ``write``
turns RGB back with the same ones; an untagged source gets swscale's default (BT.601,
limited range, or full range for a yuvj pixel format).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from sam_deblur_cli.errors import VideoError
from sam_deblur_cli.video.probe import ColourTags, VideoInfo, open_input

# AVColorSpace (a stream's matrix tag) -> the swscale matrix that converts it (av's
# reformatter.Colorspace values); other matrices have no swscale name.
SWS_MATRIX = {1: 1, 4: 4, 5: 5, 6: 5, 7: 7, 9: 9}  # BT.709, FCC, BT.470BG/BT.601, 240M, BT.2020


@dataclass
class Frame:
    """One decoded frame: ``index`` counts from 0 in presentation order; ``pts`` in
    ``time_base`` units; ``rgb`` H x W x 3 uint8 or uint16, display orientation."""

    index: int
    pts: int
    time_base: Fraction
    rgb: np.ndarray

    @property
    def seconds(self) -> float:
        return float(self.pts * self.time_base)


def iter_frames(info: VideoInfo, *, start: int = 0) -> Iterator[Frame]:
    """Every frame of ``info.path`` from index ``start`` on (earlier ones are decoded and
    dropped, which keeps indices exact for any codec). A decoding failure is a VideoError
    naming the frame; a frame without a timestamp gets the previous one plus one tick."""
    import av

    layout = "rgb24" if info.bit_depth <= 8 else "rgb48le"
    matrix = yuv_conversion(info.colour, "src")
    index, last_pts = 0, None
    with open_input(info.path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        frames = container.decode(stream)
        while True:
            try:
                frame = next(frames, None)
            except av.FFmpegError as exc:
                raise VideoError(
                    f"{info.path}: frame {index} does not decode ({exc}); the file may be "
                    "truncated or corrupt."
                ) from None
            if frame is None:
                return
            pts = frame.pts if frame.pts is not None else (last_pts or -1) + 1
            last_pts = pts
            if index >= start:
                rgb = to_display(frame.to_ndarray(format=layout, **matrix), info.rotation)
                yield Frame(index, pts, info.time_base, rgb)
            index += 1


def yuv_conversion(colour: ColourTags, side: str) -> dict[str, Any]:
    """``VideoFrame.reformat`` arguments that convert YUV with ``colour``'s matrix and range:
    ``side`` "src" for YUV -> RGB, "dst" for RGB -> YUV. Empty for an untagged source, which
    keeps swscale's default (and the frame's own pixel-format range)."""
    args: dict[str, Any] = {}
    if colour.matrix in SWS_MATRIX:
        args[f"{side}_colorspace"] = SWS_MATRIX[colour.matrix]
    if colour.range in (1, 2):
        args[f"{side}_color_range"] = colour.range
    return args


def to_display(stored: np.ndarray, rotation: int) -> np.ndarray:
    """Stored H x W x C -> display orientation (``rotation`` degrees counter-clockwise)."""
    turns = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(stored, k=turns)) if turns else stored


def to_stored(display: np.ndarray, rotation: int) -> np.ndarray:
    """The inverse of :func:`to_display`."""
    turns = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(display, k=-turns)) if turns else display
