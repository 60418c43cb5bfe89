"""Colour tags (range, primaries, transfer, matrix) survive the video engine, and frames go
YUV -> RGB -> YUV with the source's own matrix and range."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from tiny_models import TinyEnv
from video_clips import blurred_frames, make_clip

from sam_deblur_cli.amg import RecipeOverrides
from sam_deblur_cli.pipeline import Deblurrer, DeblurSettings
from sam_deblur_cli.video.engine import VideoSettings, run_video
from sam_deblur_cli.video.probe import ColourTags, probe
from sam_deblur_cli.video.write import EncodeOptions

LIMITED, FULL, BT709 = 1, 2, 1
# Lossless YUV 4:4:4: the only error left is rounding RGB to 8-bit YUV and back (measured:
# at most 2 levels in 255 for both ranges; encoding with swscale's default BT.601 limited
# range instead of the source's matrix and range: 21-33).
LOSSLESS_YUV = EncodeOptions(codec="ffv1", pix_fmt="yuv444p")
BOUND = 3


def _deblurrer() -> Deblurrer:
    return Deblurrer(
        DeblurSettings(recipe=RecipeOverrides(model="nafnet-gopro"), device="cpu", tlc=False)
    )


def _tags(path: Path) -> tuple[int, int, int, int]:
    """(range, primaries, transfer, matrix) of ``path``'s video stream, as its header says."""
    with av.open(str(path)) as container:
        ctx = container.streams.video[0].codec_context
        return ctx.color_range, ctx.color_primaries, ctx.color_trc, ctx.colorspace


def _rgb(path: Path, **conversion: object) -> list[np.ndarray]:
    """``path``'s frames as rgb24, converted with ``conversion`` (reformat's arguments)."""
    with av.open(str(path)) as container:
        return [
            f.reformat(format="rgb24", **conversion).to_ndarray()  # type: ignore[arg-type]
            for f in container.decode(video=0)
        ]


@pytest.mark.parametrize("colour_range", [LIMITED, FULL])
def test_a_bt709_clip_keeps_its_tags_and_round_trips_with_its_own_matrix_and_range(
    tiny_env: TinyEnv, tmp_path: Path, colour_range: int
) -> None:
    src = tmp_path / "hd.mkv"
    make_clip(src, blurred_frames(4), codec="ffv1", pix_fmt="yuv444p", colour=(colour_range, BT709))
    assert _tags(src) == (colour_range, BT709, BT709, BT709)
    dst = tmp_path / "hd_deblurred.mkv"
    deblurrer = _deblurrer()
    record = run_video(deblurrer, src, dst, settings=VideoSettings(encode=LOSSLESS_YUV))
    assert record["status"] == "ok" and record["frames"] == 4
    assert _tags(dst) == _tags(src)
    assert probe(dst).colour == probe(src).colour == ColourTags(colour_range, 1, 1, 1)
    own = {"src_colorspace": "itu709", "src_color_range": colour_range}
    expected = [
        np.clip(np.rint(deblurrer.deblur(rgb) * 255), 0, 255).astype(np.int64)
        for rgb in _rgb(src, **own)
    ]
    outputs = _rgb(dst, **own)
    assert len(outputs) == 4
    errors = [np.abs(out - want).max() for out, want in zip(outputs, expected, strict=True)]
    assert max(errors) <= BOUND
    # The bound can fail: the same frames read with swscale's default (BT.601, limited
    # range), which is how an untagged writer would have turned RGB into YUV, miss it widely.
    default = {"src_colorspace": "itu601", "src_color_range": LIMITED}
    misread = _rgb(dst, **default)
    wrong = [np.abs(out - want).max() for out, want in zip(misread, expected, strict=True)]
    assert min(wrong) > 3 * BOUND


@pytest.mark.parametrize(
    ("pix_fmt", "colour", "want"),
    [
        ("yuv420p", (LIMITED, BT709), ColourTags(LIMITED, 1, 1, 1)),
        ("yuv420p", (FULL, BT709), ColourTags(FULL, 1, 1, 1)),
        ("yuvj420p", None, ColourTags(FULL, 2, 2, 2)),  # full range said by the pixel format
        ("yuv420p", None, ColourTags()),  # untagged stays untagged
    ],
)
def test_the_default_h264_keeps_the_colour_tags_and_an_untagged_clip_stays_untagged(
    tiny_env: TinyEnv,
    tmp_path: Path,
    pix_fmt: str,
    colour: tuple[int, int] | None,
    want: ColourTags,
) -> None:
    src = tmp_path / "clip.mp4"
    make_clip(src, blurred_frames(3), pix_fmt=pix_fmt, colour=colour, audio=False)
    assert probe(src).colour == want
    dst = tmp_path / "clip_deblurred.mp4"
    record = run_video(_deblurrer(), src, dst)
    assert record["status"] == "ok" and record["encoding"].startswith("libx264 yuv420p")
    assert probe(dst).colour == want
    assert _tags(dst)[1:] == _tags(src)[1:] and _tags(dst)[0] == want.range


def test_an_output_that_cannot_store_the_tags_is_encoded_untagged_with_the_default_and_noted(
    tiny_env: TinyEnv, tmp_path: Path
) -> None:
    src = tmp_path / "hd.mkv"
    make_clip(src, blurred_frames(3), codec="ffv1", pix_fmt="yuv444p", colour=(FULL, BT709))
    dst = tmp_path / "hd.avi"  # AVI has no colour fields and FFV1 none of its own
    deblurrer = _deblurrer()
    record = run_video(deblurrer, src, dst, settings=VideoSettings(encode=LOSSLESS_YUV))
    assert record["status"] == "ok"
    assert record["notes"] == [
        f"{src}: ffv1 in avi cannot store the colour tags; encoded untagged with the default "
        "BT.601 conversion (.mkv keeps them)"
    ]
    assert probe(dst).colour == ColourTags()
    own = {"src_colorspace": "itu709", "src_color_range": FULL}
    expected = [np.clip(np.rint(deblurrer.deblur(rgb) * 255), 0, 255) for rgb in _rgb(src, **own)]
    outputs = _rgb(dst)  # read as players read an untagged video
    assert len(outputs) == 3
    errors = [np.abs(out - want).max() for out, want in zip(outputs, expected, strict=True)]
    assert max(errors) <= BOUND
