"""What a video holds: its video stream's size, timing, pixel format, rotation and the other
streams, read once before any frame is deblurred. Broken files become one VideoError."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from sam_deblur_cli.errors import VideoError


@dataclass(frozen=True)
class ColourTags:
    """A video's colour description as FFmpeg's enum values: ``range`` (AVColorRange: 0
    unspecified, 1 limited "tv", 2 full "pc"), ``primaries`` (AVColorPrimaries), ``trc``
    (AVColorTransferCharacteristic) and ``matrix`` (AVColorSpace: 1 BT.709, 6 BT.601, ...);
    the unspecified values (range 0, the others 2) mean untagged."""

    range: int = 0
    primaries: int = 2
    trc: int = 2
    matrix: int = 2

    @property
    def tagged(self) -> bool:
        return self != ColourTags()


@dataclass(frozen=True)
class VideoInfo:
    """The facts the engine needs about one video file.

    ``width``/``height`` are the stored (coded) size; ``rotation`` (0, 90, 180 or -90) is the
    counter-clockwise turn a player applies for display. ``frames`` is the container's count
    (0 when it does not say; the decoder's count is what the engine trusts). ``bit_depth`` is
    that of the source pixel format (8 or more); ``colour`` its colour tags (from the first
    frame; a yuvj pixel format counts as full range).
    """

    path: Path
    format: str
    codec: str
    width: int
    height: int
    pix_fmt: str
    bit_depth: int
    time_base: Fraction
    rotation: int
    frames: int
    duration: float | None
    other_streams: tuple[str, ...]  # "audio:aac", "subtitle:mov_text", ... in stream order
    colour: ColourTags = ColourTags()


@contextmanager
def open_input(path: Path | str) -> Iterator[Any]:
    """An opened ``av`` input container; a file PyAV cannot open is a VideoError."""
    import av

    try:
        container = av.open(str(path), "r")
    except FileNotFoundError:
        raise VideoError(f"{path} does not exist; check the path.") from None
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise VideoError(
            f"{path} is not a readable video ({_why(exc)}); check that the file is complete."
        ) from None
    try:
        yield container
    finally:
        container.close()


def probe(path: Path | str) -> VideoInfo:
    """Read ``path``'s header and its first frame (for the rotation and to prove it decodes).

    Raises VideoError for a file that is missing, truncated or corrupt, has no video stream,
    no decoder in this PyAV build, or no frame at all.
    """
    import av

    path = Path(path)
    with open_input(path) as container:
        if not container.streams.video:
            raise VideoError(f"{path} has no video stream; pass a video file.")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        if ctx is None or not ctx.is_decoder:
            raise VideoError(
                f"{path}'s video codec is not supported by this PyAV build; "
                "convert it to H.264 first."
            )
        try:
            first = next(container.decode(stream), None)
        except av.FFmpegError as exc:
            raise VideoError(f"{path}'s first frame does not decode ({_why(exc)}).") from None
        if first is None:
            raise VideoError(f"{path} has no video frames; pass a video with at least one frame.")
        pix_fmt = first.format.name
        others = tuple(
            f"{s.type}:{s.codec_context.name if s.codec_context else '?'}"
            for s in container.streams
            if s is not stream
        )
        duration = None if container.duration is None else container.duration / 1_000_000
        return VideoInfo(
            path=path,
            format=container.format.name,
            codec=ctx.name,
            width=first.width,
            height=first.height,
            pix_fmt=pix_fmt,
            bit_depth=bit_depth(pix_fmt),
            time_base=stream.time_base or Fraction(1, 90000),
            rotation=normal_rotation(first.rotation),
            frames=stream.frames or 0,
            duration=duration,
            other_streams=others,
            colour=colour_tags(first),
        )


def colour_tags(frame: Any) -> ColourTags:
    """The colour tags of a decoded ``av.VideoFrame``; an RGB frame has no YUV matrix or
    range to keep (its tags say nothing about a YUV encoding of it)."""
    rgb = frame.format.is_rgb
    full = frame.format.name.startswith("yuvj")  # the pixel format says what the tag may not
    return ColourTags(
        range=0 if rgb else int(frame.color_range) or (2 if full else 0),
        primaries=int(frame.color_primaries),
        trc=int(frame.color_trc),
        matrix=2 if rgb else int(frame.colorspace),
    )


def bit_depth(pix_fmt: str) -> int:
    """Bits per component of a pixel format (8 for yuv420p, 10 for yuv420p10le, ...)."""
    import av

    try:
        return max(c.bits for c in av.VideoFormat(pix_fmt).components)
    except (ValueError, av.FFmpegError):
        return 8


def normal_rotation(degrees: float) -> int:
    """A display rotation rounded to the nearest quarter turn, in {0, 90, 180, -90}."""
    quarter = round(degrees / 90) % 4
    return {0: 0, 1: 90, 2: 180, 3: -90}[quarter]


def _why(exc: BaseException) -> str:
    return str(getattr(exc, "strerror", None) or exc).rstrip(".")
