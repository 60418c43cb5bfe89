"""Audio and subtitle streams that the output container cannot hold as they are.

Such audio is decoded and re-encoded to the container's own codec (AAC in MP4/MOV, Opus in
WebM, MP3 in AVI) at the source's sample rate and channel layout where the encoder takes
them (else the nearest higher rate it takes: Opus has 8, 12, 16, 24 and 48 kHz), starting
where the source's audio starts. Text subtitles are converted to the container's text codec
(mov_text, SubRip, WebVTT) with their timestamps; bitmap subtitles, and subtitles in AVI,
cannot be converted. ``write.assemble`` copies every stream it can and converts the rest.
"""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction
from itertools import chain
from typing import Any, Protocol

from sam_deblur_cli.errors import VideoError

# FFmpeg muxer -> the codec its converted streams get.
AUDIO_CODECS = {
    "mp4": "aac",
    "mov": "aac",
    "webm": "libopus",
    "matroska": "libopus",
    "avi": "libmp3lame",
}
SUBTITLE_CODECS = {"mp4": "mov_text", "mov": "mov_text", "webm": "webvtt", "matroska": "subrip"}
AUDIO_NAMES = {"aac": "AAC", "libopus": "Opus", "libmp3lame": "MP3"}
BIT_RATE_PER_CHANNEL = 64_000  # bit/s: 128 kb/s for stereo AAC, Opus or MP3
# A channel count without a named layout (PCM in Matroska, say) -> the common layout.
DEFAULT_LAYOUTS = {1: "mono", 2: "stereo", 3: "2.1", 4: "quad", 5: "5.0", 6: "5.1", 8: "7.1"}
# What text-subtitle encoders need to open: an ASS header with a Default style.
ASS_HEADER = (
    b"[Script Info]\r\nScriptType: v4.00+\r\nPlayResX: 384\r\nPlayResY: 288\r\n\r\n"
    b"[V4+ Styles]\r\nFormat: Name, Fontname, Fontsize, PrimaryColour, SecondaryColour, "
    b"OutlineColour, BackColour, Bold, Italic, Underline, StrikeOut, ScaleX, ScaleY, Spacing, "
    b"Angle, BorderStyle, Outline, Shadow, Alignment, MarginL, MarginR, MarginV, Encoding\r\n"
    b"Style: Default,Arial,16,&Hffffff,&Hffffff,&H0,&H0,0,0,0,0,100,100,0,0,1,1,0,2,10,10,10,0"
    b"\r\n\r\n[Events]\r\nFormat: Layer, Start, End, Style, Name, MarginL, MarginR, MarginV, "
    b"Effect, Text\r\n"
)

Timed = tuple[float, Any]  # (seconds, av.Packet), what assemble merges


class Converter(Protocol):
    """One source stream re-encoded into a new output stream: ``note`` says what was done
    (one line), ``packets()`` yields the new stream's packets in order."""

    note: str

    def packets(self) -> Iterator[Timed]: ...


def converter_for(out: Any, muxer: str, source: Any, stream: Any, where: str) -> Converter:
    """A Converter of ``stream`` (of the opened input ``source``, which the converter
    demuxes) into ``out``, a ``muxer`` output; ``where`` names the source in messages.
    A VideoError when the stream cannot be converted (bitmap subtitles, no encoder)."""
    import av

    ctx = stream.codec_context
    name = ctx.name if ctx else "?"
    target = (AUDIO_CODECS if stream.type == "audio" else SUBTITLE_CODECS).get(muxer)
    convertible = ctx is not None and (stream.type == "audio" or bool(ctx.codec.text_sub))
    if target is None or target not in av.codecs_available or not convertible or not ctx.is_decoder:
        raise VideoError(
            f"The output cannot hold {where}'s {stream.type} ({name}) and it cannot be "
            "converted; write to .mkv, which holds every codec, or to the input's own container."
        )
    if stream.type == "audio":
        return AudioConverter(out, source, stream, target, where)
    return SubtitleConverter(out, source, stream, target, where)


class AudioConverter:
    """Decode -> resample (where the encoder needs it) -> encode; timestamps counted in
    samples from the source's first audio frame, so the audio starts where it started."""

    def __init__(self, out: Any, source: Any, stream: Any, codec: str, where: str) -> None:
        import av

        self.source, self.stream, src = source, stream, stream.codec_context
        self.where = where
        encoder = av.Codec(codec, "w")
        rate, rates = src.sample_rate, encoder.audio_rates
        if rates and rate not in rates:
            rate = min((r for r in rates if r >= rate), default=max(rates))
        formats = [f.name for f in encoder.audio_formats or []]
        fmt = src.format.name if src.format else ""
        if formats and fmt not in formats:
            fmt = next((f for f in formats if f.startswith("flt")), formats[0])
        layout = src.layout.name
        if layout.endswith("channels"):  # channels without an order: the usual layout
            layout = DEFAULT_LAYOUTS.get(src.layout.nb_channels, layout)
        self.rate = rate
        self.target: Any = out.add_stream(codec, rate=rate)
        self.target.layout, self.target.format = layout, fmt
        self.target.bit_rate = BIT_RATE_PER_CHANNEL * src.layout.nb_channels
        self.target.time_base = self.target.codec_context.time_base = Fraction(1, rate)
        self.target.metadata.update(stream.metadata)
        try:
            self.target.codec_context.open()
        except (av.FFmpegError, ValueError) as exc:
            raise VideoError(
                f"The output cannot hold {where}'s audio ({src.name}) and {codec} cannot "
                f"encode it ({exc}); write to .mkv, which holds every codec."
            ) from None
        size = self.target.codec_context.frame_size or None
        self.resampler = av.AudioResampler(format=fmt, layout=layout, rate=rate, frame_size=size)
        resampled = "" if rate == src.sample_rate else f", resampled from {src.sample_rate} Hz"
        self.note = (
            f"{where}: audio stream {stream.index} ({src.name}) re-encoded as "
            f"{AUDIO_NAMES.get(codec, codec)} {rate} Hz {layout}{resampled}; the output "
            f"container cannot hold {src.name} (.mkv keeps it as it is)"
        )

    def packets(self) -> Iterator[Timed]:
        # An MP4/MOV track that starts after 0 keeps AAC's priming frame (its edit list can
        # only skip it for a track starting at 0), so there the decoded audio begins one
        # frame early; the sound itself lands where the source's did.
        start: int | None = None
        count = 0
        for frame in chain(_decoded(self.source, self.stream, self.where), [None]):
            if frame is not None and start is None:
                start = round((frame.pts or 0) * frame.time_base * self.rate)
            for chunk in self.resampler.resample(frame):
                chunk.pts, chunk.time_base = (start or 0) + count, Fraction(1, self.rate)
                count += chunk.samples
                yield from _timed(self.target.encode(chunk), self.target)
        yield from _timed(self.target.encode(None), self.target)


class SubtitleConverter:
    """Text subtitles decoded to ASS events and encoded with the target text codec, each at
    its source timestamp and duration."""

    def __init__(self, out: Any, source: Any, stream: Any, codec: str, where: str) -> None:
        self.source, self.stream, src = source, stream, stream.codec_context
        src.open(strict=False)  # the decoder makes its ASS header on opening
        self.target: Any = out.add_stream(codec)
        self.target.time_base = self.target.codec_context.time_base = stream.time_base
        self.target.codec_context.subtitle_header = src.subtitle_header or ASS_HEADER
        self.target.metadata.update(stream.metadata)
        self.note = (
            f"{where}: subtitle stream {stream.index} ({src.name}) converted to {codec}; the "
            f"output container cannot hold {src.name} (.mkv keeps it as it is)"
        )

    def packets(self) -> Iterator[Timed]:
        from av.subtitles.subtitle import SubtitleSet

        decoder, base = self.stream.codec_context, self.stream.time_base
        for packet in self.source.demux(self.stream):
            if not packet.size or packet.pts is None:
                continue
            cues = decoder.decode2(packet)
            events = [r.ass for r in cues or () if getattr(r, "ass", None)]
            if not events:
                continue  # an empty cue: the gap between two others
            shown = Fraction(cues.end_display_time - cues.start_display_time, 1000)
            duration = packet.duration or round(shown / base)
            # one event per packet: further lines join the first one's text
            text = b"\\N".join([events[0], *(e.split(b",", 8)[-1] for e in events[1:])])
            new = self.target.codec_context.encode_subtitle(
                SubtitleSet.create(text, 0, round(duration * base * 1000), 0)
            )
            new.pts = new.dts = packet.pts
            new.duration, new.time_base, new.stream = duration, base, self.target
            yield float(packet.pts * base), new


def _decoded(source: Any, stream: Any, where: str) -> Iterator[Any]:
    import av

    for packet in source.demux(stream):
        try:
            yield from packet.decode()
        except av.FFmpegError as exc:
            when = float((packet.pts or 0) * (packet.time_base or 0))
            raise VideoError(
                f"{where}'s audio stream {stream.index} does not decode at {when:.3f} s "
                f"({exc}); write to .mkv to copy it as it is, or repair the file."
            ) from None


def _timed(packets: list[Any], target: Any) -> Iterator[Timed]:
    for packet in packets:
        packet.stream = target
        stamp = packet.dts if packet.dts is not None else packet.pts
        yield float((stamp or 0) * (packet.time_base or Fraction(0))), packet
