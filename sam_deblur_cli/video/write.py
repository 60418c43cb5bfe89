"""Encode deblurred frames and put the finished video together.

Frames are encoded into segment files (a few dozen frames each, the final container's
format, video only) with their input timestamps and the input's colour tags, so a variable
frame rate survives and an interrupted run keeps its finished segments. :func:`assemble` then
copies the segments' video packets and the input's audio and subtitle packets, unchanged,
into the final file (written through ``files.atomic_file``: a reader never sees half a
video); a stream the container cannot hold is converted (``convert``) and noted.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from sam_deblur_cli.errors import UsageError
from sam_deblur_cli.files import atomic_file
from sam_deblur_cli.video.probe import ColourTags, VideoInfo, open_input
from sam_deblur_cli.video.read import SWS_MATRIX, to_stored, yuv_conversion

logger = logging.getLogger(__name__)

# File extension -> FFmpeg muxer (PyAV needs the name when writing to a file object).
MUXERS = {
    ".mp4": "mp4",
    ".m4v": "mp4",
    ".mov": "mov",
    ".mkv": "matroska",
    ".webm": "webm",
    ".avi": "avi",
}
# What users type -> the encoder in PyAV's wheel.
CODECS = {
    "h264": "libx264",
    "x264": "libx264",
    "libx264": "libx264",
    "libx264rgb": "libx264rgb",
    "hevc": "libx265",
    "h265": "libx265",
    "x265": "libx265",
    "libx265": "libx265",
    "vp9": "libvpx-vp9",
    "libvpx-vp9": "libvpx-vp9",
    "av1": "libsvtav1",
    "libsvtav1": "libsvtav1",
    "ffv1": "ffv1",
}
# Containers that store colour tags, and encoders that also write them into the video.
TAGGING_MUXERS = frozenset({"mp4", "mov", "matroska", "webm"})
TAGGING_CODECS = frozenset({"libx264", "libx264rgb", "libx265", "libvpx-vp9", "libsvtav1"})
DEFAULT_CRF = {"libx264": 18, "libx264rgb": 18, "libx265": 20, "libvpx-vp9": 30, "libsvtav1": 30}
DEFAULT_PRESET = {"libx264": "medium", "libx264rgb": "medium", "libx265": "medium"}


@dataclass(frozen=True)
class EncodeOptions:
    """What the user asked for; None: the default for the container and the source."""

    codec: str | None = None
    crf: int | None = None
    preset: str | None = None
    pix_fmt: str | None = None


@dataclass(frozen=True)
class Encoding:
    """A resolved encoder set-up: encoder name, pixel format, encoder options (strings)."""

    codec: str
    pix_fmt: str
    options: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        return " ".join([self.codec, self.pix_fmt, *(f"{k}={v}" for k, v in self.options.items())])


def muxer_for(path: Path) -> str:
    """The FFmpeg muxer of an output path, by its extension (UsageError if none fits)."""
    try:
        return MUXERS[path.suffix.lower()]
    except KeyError:
        raise UsageError(
            f"{path} has no video extension; name the output {', '.join(MUXERS)}."
        ) from None


def resolve_encoding(info: VideoInfo, dst: Path, wanted: EncodeOptions) -> Encoding:
    """The encoder for ``dst``: ``wanted`` where given, else H.264 (VP9 in WebM); the pixel
    format keeps a 10-bit (or deeper) source at 10 bits when the encoder can."""
    import av

    muxer = muxer_for(dst)
    name = wanted.codec or ("vp9" if muxer == "webm" else "h264")
    codec = CODECS.get(name.lower())
    if codec is None or codec not in av.codecs_available:
        raise UsageError(f"Unknown video codec {name!r}; use one of {', '.join(sorted(CODECS))}.")
    formats = [f.name for f in (av.Codec(codec, "w").video_formats or [])]
    pix_fmt = wanted.pix_fmt or _default_pix_fmt(codec, formats, info.bit_depth)
    if formats and pix_fmt not in formats:
        raise UsageError(
            f"{codec} cannot encode {pix_fmt}; pick one of {', '.join(formats[:12])} "
            "with --pix-fmt."
        )
    options: dict[str, str] = {}
    if wanted.crf is not None and codec not in DEFAULT_CRF:
        raise UsageError(f"{codec} takes no --crf (it is lossless); drop it.")
    crf = wanted.crf if wanted.crf is not None else DEFAULT_CRF.get(codec)
    if crf is not None:
        options["crf"] = str(crf)
        if codec == "libvpx-vp9":
            options["b"] = "0"  # constant quality mode
    preset = wanted.preset or DEFAULT_PRESET.get(codec)
    if preset is not None:
        options["preset"] = preset
    if codec == "libx265":
        options["x265-params"] = "log-level=error"
    return Encoding(codec, pix_fmt, options)


def _default_pix_fmt(codec: str, formats: Sequence[str], depth: int) -> str:
    if codec == "libx264rgb":
        return "rgb24" if depth <= 8 else "bgr0"
    if depth > 8:
        for deep in ("yuv420p10le", "yuv420p10"):
            if deep in formats:
                return deep
    return "yuv420p" if not formats or "yuv420p" in formats else formats[0]


def output_colour(info: VideoInfo, encoding: Encoding, muxer: str) -> tuple[ColourTags, str]:
    """The colour tags the output gets, and a note ("" if none) where they differ from the
    source's: an output that cannot store them (FFV1 in AVI) is encoded untagged with
    swscale's default, and a matrix swscale has no converter for is left untagged, so that
    players show what was encoded."""
    colour = info.colour
    if not colour.tagged:
        return colour, ""
    if muxer not in TAGGING_MUXERS and encoding.codec not in TAGGING_CODECS:
        return ColourTags(), (
            f"{info.path}: {encoding.codec} in {muxer} cannot store the colour tags; encoded "
            "untagged with the default BT.601 conversion (.mkv keeps them)"
        )
    if colour.matrix != 2 and colour.matrix not in SWS_MATRIX:
        return replace(colour, matrix=2), (
            f"{info.path}: no converter for colour matrix {colour.matrix}; encoded with "
            "BT.601 and the matrix left untagged"
        )
    return colour, ""


def _tag_colour(ctx: Any, colour: ColourTags, pix_fmt: str) -> dict[str, Any]:
    """Give the encoder the ``colour`` tags (a YUV output also its matrix and range) and
    return the ``reformat`` arguments that turn RGB into YUV with that matrix and range."""
    import av

    if colour.primaries != 2:
        ctx.color_primaries = colour.primaries
    if colour.trc != 2:
        ctx.color_trc = colour.trc
    if av.VideoFormat(pix_fmt).is_rgb:
        return {}
    conversion = yuv_conversion(colour, "dst")
    if "dst_color_range" in conversion:
        ctx.color_range = colour.range
    if "dst_colorspace" in conversion:
        ctx.colorspace = colour.matrix
    return conversion


class SegmentWriter:
    """Encodes frames into one segment file, written atomically (``close()`` keeps it,
    ``abort()`` or an exception leaves nothing). Frames are display-oriented RGB arrays
    (uint8, or uint16 for deep sources) with their input ``pts``."""

    def __init__(self, path: Path, info: VideoInfo, encoding: Encoding, muxer: str) -> None:
        import av

        self.info, self._stack = info, ExitStack()
        handle = self._stack.enter_context(atomic_file(path))
        self.container = av.open(handle, "w", format=muxer)
        self._stack.callback(self.container.close)
        stream: Any = self.container.add_stream(encoding.codec)
        stream.width, stream.height = info.width, info.height
        stream.pix_fmt = encoding.pix_fmt
        stream.time_base = info.time_base
        stream.codec_context.time_base = info.time_base
        stream.codec_context.options = dict(encoding.options)
        self.colour = output_colour(info, encoding, muxer)[0]
        self._yuv = _tag_colour(stream.codec_context, self.colour, encoding.pix_fmt)
        self.stream = stream
        self.frames = 0

    def write(self, rgb: np.ndarray, pts: int) -> None:
        import av

        layout = "rgb24" if rgb.dtype == np.uint8 else "rgb48le"
        frame = av.VideoFrame.from_ndarray(to_stored(rgb, self.info.rotation), format=layout)
        frame = frame.reformat(format=self.stream.pix_fmt, **self._yuv)
        frame.color_primaries, frame.color_trc = self.colour.primaries, self.colour.trc
        frame.pts, frame.time_base = pts, self.info.time_base
        self.container.mux(self.stream.encode(frame))
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder and keep the file."""
        self.container.mux(self.stream.encode(None))
        self._stack.close()

    def abort(self) -> None:
        """Drop the file (the temporary file is removed, nothing is renamed)."""
        self._stack.__exit__(RuntimeError, RuntimeError("aborted"), None)


def assemble(src: Path, segments: Sequence[Path], dst: Path, info: VideoInfo) -> list[str]:
    """Write ``dst``: the segments' video packets, then every audio and subtitle stream of
    ``src`` copied packet for packet where ``dst``'s container holds its codec, else converted
    (see ``convert``); the container metadata and the rotation kept. Returns one note per
    converted stream (each also logged as a warning)."""
    import av

    from sam_deblur_cli.video.convert import Converter, converter_for

    muxer = muxer_for(dst)
    with ExitStack() as stack:
        handle = stack.enter_context(atomic_file(dst))
        inputs = [stack.enter_context(open_input(path)) for path in segments]
        source = stack.enter_context(open_input(src))
        out = av.open(handle, "w", format=muxer)
        stack.callback(out.close)
        out.metadata.update(_kept_metadata(source.metadata))
        video = out.add_stream_from_template(inputs[0].streams.video[0])
        if info.rotation:
            video.set_display_rotation(info.rotation)
        copied, converted = {}, list[Converter]()
        for stream in source.streams:
            if stream.type not in ("audio", "subtitle"):
                if stream.type != "video":
                    logger.warning("%s: %s stream %d is not copied", src, stream.type, stream.index)
                continue
            name = stream.codec_context.name if stream.codec_context else "?"
            if name in out.supported_codecs:
                copied[stream.index] = out.add_stream_from_template(stream)
                copied[stream.index].metadata.update(stream.metadata)
                continue
            own = stack.enter_context(open_input(src))  # each converted stream demuxes alone
            converted.append(converter_for(out, muxer, own, own.streams[stream.index], str(src)))
            logger.warning("%s", converted[-1].note)
        video.metadata.update(source.streams.video[0].metadata)
        streams: list[Iterator[Any]] = [_packets(c, c.streams.video[0], video) for c in inputs]
        if copied:
            streams.append(_copied(source, copied))
        streams.extend(c.packets() for c in converted)
        for packet in heapq.merge(*streams, key=_packet_time):
            out.mux(packet[1])
    return [c.note for c in converted]


def _packets(container: Any, stream: Any, target: Any) -> Iterator[tuple[float, Any]]:
    # Matroska stores no decoding times: its demuxer guesses some and leaves others unset,
    # and with B-frames at a variable frame rate the guesses go backwards, which the muxer
    # refuses. Without any, the muxer derives them all from the presentation times.
    guessed = "matroska" in container.format.name
    for packet in container.demux(stream):
        if packet.size == 0 and packet.dts is None:
            continue  # the demuxer's flush packet
        if guessed:
            packet.dts = None
        packet.stream = target
        yield _when(packet), packet


def _copied(source: Any, targets: dict[int, Any]) -> Iterator[tuple[float, Any]]:
    wanted = [s for s in source.streams if s.index in targets]
    for packet in source.demux(*wanted):
        if packet.size == 0 and packet.dts is None:
            continue
        packet.stream = targets[packet.stream_index]
        yield _when(packet), packet


def _when(packet: Any) -> float:
    stamp = packet.dts if packet.dts is not None else packet.pts
    return float((stamp or 0) * (packet.time_base or Fraction(0)))


def _packet_time(item: tuple[float, Any]) -> float:
    return item[0]


def _kept_metadata(metadata: dict[str, str]) -> dict[str, str]:
    """Container tags worth keeping (the muxer writes its own brand and encoder tags)."""
    dropped = {"major_brand", "minor_version", "compatible_brands", "encoder"}
    return {k: v for k, v in metadata.items() if k not in dropped}
