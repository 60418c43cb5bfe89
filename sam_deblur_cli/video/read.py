"""Decode a video's frames, in display order, with their timestamps.

Frames come out as RGB arrays in display orientation (the stream's rotation applied), uint8
for 8-bit sources and uint16 (full 16-bit range) for deeper ones, so that deblurring a frame
is deblurring what a viewer sees; ``write`` turns them back before encoding.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from sam_deblur_cli.errors import VideoError
from sam_deblur_cli.video.probe import VideoInfo, open_input


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
                rgb = to_display(frame.to_ndarray(format=layout), info.rotation)
                yield Frame(index, pts, info.time_base, rgb)
            index += 1


def to_display(stored: np.ndarray, rotation: int) -> np.ndarray:
    """Stored H x W x C -> display orientation (``rotation`` degrees counter-clockwise)."""
    turns = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(stored, k=turns)) if turns else stored


def to_stored(display: np.ndarray, rotation: int) -> np.ndarray:
    """The inverse of :func:`to_display`."""
    turns = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(display, k=-turns)) if turns else display
