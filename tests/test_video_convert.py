"""Audio and subtitles the output container cannot hold: re-encoded or converted, noted,
and in time with the video; streams it can hold are still copied byte for byte."""

from __future__ import annotations

import logging
from pathlib import Path

import av
import pytest
from tiny_models import TinyEnv
from video_clips import (
    SUBTITLES,
    VFR_STEPS,
    Sound,
    audio_packets,
    audio_span,
    blurred_frames,
    cues,
    decoded,
    make_clip,
)

from sam_deblur_cli.amg import RecipeOverrides
from sam_deblur_cli.errors import VideoError
from sam_deblur_cli.pipeline import Deblurrer, DeblurSettings
from sam_deblur_cli.video.engine import VideoSettings, run_video

SETTINGS = VideoSettings(segment_frames=4)


def _deblurrer() -> Deblurrer:
    return Deblurrer(
        DeblurSettings(recipe=RecipeOverrides(model="nafnet-gopro"), device="cpu", tlc=False)
    )


def _streams(path: Path) -> list[tuple[str, str, int | None, str | None]]:
    """(type, codec, sample rate, language) of every stream of ``path``."""
    with av.open(str(path)) as container:
        return [
            (
                s.type,
                s.codec_context.name,
                getattr(s.codec_context, "sample_rate", None),
                s.metadata.get("language"),
            )
            for s in container.streams
        ]


@pytest.mark.parametrize(
    ("name", "sound", "subtitle", "out", "want"),
    [
        # .mp4 holds mov_text but no unsigned 8-bit PCM: AAC at the same rate and layout
        ("pcm.mov", Sound("pcm_u8", 22050, "stereo"), "mov_text", ".mp4", ("aac", 22050)),
        # .webm holds neither: Opus, which takes no 44.1 kHz (48 kHz), and WebVTT; the sound
        # starts 0.12 s after the picture
        ("pcm.mkv", Sound("pcm_s16le", 44100, "stereo", 0.12), "subrip", ".webm", ("opus", 48000)),
        # .mkv holds this PCM (copied byte for byte) but no mov_text: SubRip
        ("pcm.mov", Sound("pcm_s16le", 16000), "mov_text", ".mkv", None),
    ],
)
def test_streams_the_container_cannot_hold_are_converted_in_time_and_noted(
    tiny_env: TinyEnv,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    name: str,
    sound: Sound,
    subtitle: str,
    out: str,
    want: tuple[str, int] | None,
) -> None:
    src = tmp_path / name
    make_clip(src, blurred_frames(9), steps=VFR_STEPS, sound=sound, subtitle=subtitle)
    dst = tmp_path / f"out{out}"
    with caplog.at_level(logging.WARNING, logger="sam_deblur_cli"):
        record = run_video(_deblurrer(), src, dst, settings=SETTINGS)
    assert record["status"] == "ok" and record["frames"] == 9
    assert decoded(dst)[0] == decoded(src)[0]  # every frame at its own time
    kinds = _streams(dst)
    assert [k[0] for k in kinds] == ["video", "audio", "subtitle"]
    assert [k[3] for k in kinds[1:]] == ["eng", "fra"]  # stream tags kept
    # (FFmpeg reads SubRip back with its decoder named srt)
    text = {".mp4": "mov_text", ".webm": "webvtt", ".mkv": "srt"}[out]
    assert kinds[2][1] == text
    assert cues(dst) == [(a / 1000, b / 1000, line) for a, b, line in SUBTITLES]
    notes = record["notes"]
    if want is None:
        assert audio_packets(dst) == audio_packets(src)
        assert kinds[1][1:3] == ("pcm_s16le", 16000)
        assert len(notes) == 1 and "subtitle stream 2 (mov_text) converted to subrip" in notes[0]
    else:
        assert kinds[1][1:3] == want
        assert str(src) in notes[0] and f"audio stream 1 ({sound.codec}) re-encoded" in notes[0]
        assert f"{want[1]} Hz stereo" in notes[0]
        assert ("resampled from 44100 Hz" in notes[0]) == (want[1] != sound.rate)
        # mov_text is copied into .mp4 as it is; SubRip is converted for .webm
        assert [n.split(": ")[1][:17] for n in notes[1:]] == (
            ["subtitle stream 2"] if out == ".webm" else []
        )
        start_in, length_in, _ = audio_span(src)
        start_out, length_out, frame = audio_span(dst)
        one_frame = frame / want[1]  # one frame of the encoder: 1024 (AAC) or 960 (Opus)
        assert start_in == pytest.approx(sound.start)
        assert abs(start_out - start_in) <= one_frame
        assert abs(length_out - length_in) <= one_frame
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert logged == notes


def test_subtitles_the_output_can_neither_hold_nor_convert_fail_clearly(
    tiny_env: TinyEnv, tmp_path: Path
) -> None:
    src = tmp_path / "clip.mkv"
    make_clip(src, blurred_frames(4), subtitle="subrip")
    dst = tmp_path / "out.avi"  # AVI has no subtitle streams at all
    with pytest.raises(VideoError, match=r"cannot hold .*clip\.mkv's subtitle \(\w+\).*\.mkv"):
        run_video(_deblurrer(), src, dst, settings=SETTINGS)
    assert not dst.exists()
