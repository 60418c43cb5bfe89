"""Short test videos made with PyAV: a real photo sliding under a known motion blur, with an
audio tone; variable frame rate and rotation on request; broken files for the error paths."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from tiny_models import small_photo

WIDTH, HEIGHT = 64, 48
TIME_BASE = Fraction(1, 1000)
CFR_STEPS = [40]  # ms between frames: 25 fps
VFR_STEPS = [30, 70, 40, 50]  # ms: a variable frame rate


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
    subtitle: bool = False,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
) -> list[int]:
    """Encode ``frames`` at timestamps following ``steps`` (ms, cycled); returns the pts."""
    path.parent.mkdir(parents=True, exist_ok=True)
    out = av.open(str(path), "w")
    out.metadata["title"] = "test clip"
    video = out.add_stream(codec, rate=25)
    video.width, video.height, video.pix_fmt = frames[0].shape[1], frames[0].shape[0], pix_fmt
    video.time_base = TIME_BASE
    video.codec_context.time_base = TIME_BASE
    if rotation:
        video.set_display_rotation(rotation)
    tone = out.add_stream("aac", rate=16000) if audio else None
    if tone is not None:
        tone.layout = "mono"
        tone.metadata["language"] = "eng"
    stamps, t = [], 0
    for i, rgb in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts, frame.time_base = t, TIME_BASE
        stamps.append(t)
        t += steps[i % len(steps)]
        out.mux(video.encode(frame))
    out.mux(video.encode(None))
    if tone is not None:
        samples = np.sin(2 * np.pi * 440 * np.arange(16 * t) / 16000).astype(np.float32) * 0.3
        for start in range(0, samples.size, 1024):
            chunk = av.AudioFrame.from_ndarray(
                samples[None, start : start + 1024], format="fltp", layout="mono"
            )
            chunk.sample_rate, chunk.pts = 16000, start
            out.mux(tone.encode(chunk))
        out.mux(tone.encode(None))
    out.close()
    return stamps


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
