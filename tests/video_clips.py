"""Short test videos made with PyAV: a real photo sliding under a known motion blur, with an
audio tone; variable frame rate and rotation on request; broken files for the error paths."""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from av.subtitles.subtitle import SubtitleSet
from tiny_models import small_photo

from sam_deblur_cli.video.convert import ASS_HEADER

WIDTH, HEIGHT = 64, 48
TIME_BASE = Fraction(1, 1000)
CFR_STEPS = [40]  # ms between frames: 25 fps
VFR_STEPS = [30, 70, 40, 50]  # ms: a variable frame rate
SUBTITLES = [(0, 120, "Bonjour"), (200, 330, "Au revoir")]  # (start ms, end ms, text)


@dataclass(frozen=True)
class Sound:
    """A clip's audio: codec, sample rate, layout and when it starts (seconds)."""

    codec: str = "aac"
    rate: int = 16000
    layout: str = "mono"
    start: float = 0.0


def blurred_frames(count: int, *, cut_at: int | None = None) -> list[np.ndarray]:
    """``count`` H x W x 3 uint8 frames: the astronaut sliding 2 px a frame to the right,
    each blurred by a 5-pixel horizontal box (the motion during the exposure). From frame
    ``cut_at`` on, another photo (a scene cut)."""
    frames = []
    for i in range(count):
        photo = small_photo("coffee" if cut_at is not None and i >= cut_at else "astronaut")
        photo = np.asarray(photo[:HEIGHT, :WIDTH], dtype=np.float32)
        if photo.shape[:2] != (HEIGHT, WIDTH):  # coffee is 50 x 75 at step 8
            photo = np.resize(photo, (HEIGHT, WIDTH, 3))
        moved = np.roll(photo, 2 * i, axis=1)
        blurred = sum(np.roll(moved, s, axis=1) for s in range(-2, 3)) / 5.0
        frames.append(np.clip(np.rint(blurred), 0, 255).astype(np.uint8))
    return frames


def panning_frames(
    count: int, *, step: int = 3, cut_at: int | None = None, size: tuple[int, int] = (160, 120)
) -> list[np.ndarray]:
    """``count`` W x H uint8 frames of a camera panning ``step`` px a frame across the
    full-size astronaut (no wrap-around: new picture enters at the edge), each blurred by a
    5-pixel horizontal box. From frame ``cut_at`` on, the same pan over the coffee photo
    (a hard cut)."""
    from skimage import data

    w, h = size
    frames = []
    for i in range(count):
        photo = data.coffee() if cut_at is not None and i >= cut_at else data.astronaut()
        x = 40 + step * i
        view = photo[60 : 60 + h, x - 2 : x + w + 2, :3].astype(np.float32)
        blurred = sum(view[:, s : s + w] for s in range(5)) / 5.0
        frames.append(np.clip(np.rint(blurred), 0, 255).astype(np.uint8))
    return frames


def make_clip(
    path: Path,
    frames: list[np.ndarray],
    *,
    steps: list[int] = CFR_STEPS,
    rotation: int = 0,
    audio: bool = True,
    subtitle: str | None = None,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    sound: Sound | None = None,
    colour: tuple[int, int] | None = None,
) -> list[int]:
    """Encode ``frames`` at timestamps following ``steps`` (ms, cycled); returns the pts.

    ``sound``: the audio's codec, rate, layout and start (default AAC 16 kHz mono from 0);
    ``subtitle``: a text subtitle codec for the SUBTITLES cues; ``colour``: (range, matrix)
    as FFmpeg's enum values (1/2 limited/full, 1 BT.709...): frames converted with them and
    the stream tagged with them, primaries and transfer BT.709 too.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    out = av.open(str(path), "w")
    out.metadata["title"] = "test clip"
    video = out.add_stream(codec, rate=25)
    video.width, video.height, video.pix_fmt = frames[0].shape[1], frames[0].shape[0], pix_fmt
    video.time_base = TIME_BASE
    video.codec_context.time_base = TIME_BASE
    if colour is not None:
        ctx = video.codec_context
        ctx.color_range, ctx.colorspace = colour
        ctx.color_primaries = ctx.color_trc = 1
    if rotation:
        video.set_display_rotation(rotation)
    sound = sound or (Sound() if audio else None)
    tone = out.add_stream(sound.codec, rate=sound.rate) if sound is not None else None
    if tone is not None:
        tone.layout = sound.layout
        tone.metadata["language"] = "eng"
    text = out.add_stream(subtitle) if subtitle else None
    if text is not None:
        text.time_base = TIME_BASE
        text.codec_context.subtitle_header = ASS_HEADER
        text.metadata["language"] = "fra"
    stamps, t = [], 0
    for i, rgb in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        if colour is not None:
            frame = frame.reformat(
                format=pix_fmt, dst_color_range=colour[0], dst_colorspace=colour[1]
            )
            frame.color_primaries = frame.color_trc = 1
        frame.pts, frame.time_base = t, TIME_BASE
        stamps.append(t)
        t += steps[i % len(steps)]
        out.mux(video.encode(frame))
    out.mux(video.encode(None))
    if tone is not None:
        assert sound is not None
        _sound(out, tone, sound, t)
    if text is not None:
        for start, end, line in SUBTITLES:
            cue = SubtitleSet.create(f"0,0,Default,,0,0,0,,{line}".encode(), 0, end - start, 0)
            packet = text.codec_context.encode_subtitle(cue)
            packet.pts = packet.dts = start
            packet.duration, packet.time_base, packet.stream = end - start, TIME_BASE, text
            out.mux(packet)
    out.close()
    return stamps


def _sound(out: Any, tone: Any, sound: Sound, ms: int) -> None:
    """A 440 Hz tone (0.3 loud) in every channel from ``sound.start`` (s) to ``ms``."""
    rate, channels = sound.rate, tone.codec_context.layout.nb_channels
    count = rate * ms // 1000 - round(sound.start * rate)
    samples = np.sin(2 * np.pi * 440 * np.arange(count) / rate).astype(np.float32) * 0.3
    fmt = tone.codec_context.format.name
    first = round(sound.start * rate)
    for start in range(0, samples.size, 1024):
        part = np.repeat(samples[None, start : start + 1024], channels, axis=0)
        if fmt == "fltp":
            chunk = av.AudioFrame.from_ndarray(part, format="fltp", layout=sound.layout)
        else:  # packed integers: PCM s16 or u8
            scaled = part * 32767 if fmt == "s16" else part * 127 + 128
            packed = np.rint(scaled).astype(np.int16 if fmt == "s16" else np.uint8)
            chunk = av.AudioFrame.from_ndarray(
                packed.T.reshape(1, -1), format=fmt, layout=sound.layout
            )
        chunk.sample_rate, chunk.pts = rate, first + start
        chunk.time_base = Fraction(1, rate)
        out.mux(tone.encode(chunk))
    out.mux(tone.encode(None))


def decoded(path: Path) -> tuple[list[Fraction], list[np.ndarray], int]:
    """(presentation times, rgb24 frames as stored, rotation) of ``path``'s video."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        times, images, rotation = [], [], 0
        for frame in container.decode(stream):
            times.append(frame.pts * stream.time_base)
            images.append(frame.to_ndarray(format="rgb24"))
            rotation = round(frame.rotation)
    return times, images, rotation


def audio_packets(path: Path) -> list[tuple[int | None, bytes]]:
    """(pts in seconds*16000, payload) of every audio packet of ``path``."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        return [
            (None if p.pts is None else int(p.pts * p.time_base * 16000), bytes(p))
            for p in container.demux(stream)
            if p.size
        ]


def audio_span(path: Path) -> tuple[float, float, int]:
    """(start, duration in seconds, samples in one encoded frame) of ``path``'s decoded audio."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        frames = list(container.decode(stream))
    rate = frames[0].sample_rate
    start = float(frames[0].pts * frames[0].time_base)
    return start, sum(f.samples for f in frames) / rate, max(f.samples for f in frames)


def cues(path: Path) -> list[tuple[float, float, str]]:
    """(start s, end s, text) of every non-empty cue of ``path``'s subtitle stream."""
    with av.open(str(path)) as container:
        stream = container.streams.subtitles[0]
        found = []
        for packet in container.demux(stream):
            if not packet.size or packet.pts is None:
                continue
            for cue in stream.codec_context.decode2(packet) or ():
                start = packet.pts * stream.time_base
                end = start + packet.duration * stream.time_base
                found.append((float(start), float(end), _plain(cue.dialogue)))  # type: ignore[attr-defined]
    return found


def _plain(text: bytes) -> str:
    """A cue's words without ASS override tags (``{\\an0}`` and the like)."""
    return re.sub(r"\{[^}]*\}", "", text.decode())
