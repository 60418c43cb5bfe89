"""The video engine with SAM in a thread of its own beside the network: the same video out."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tiny_models import TinyEnv
from video_clips import decoded, make_clip, panning_frames

from sam_deblur_cli.amg import RecipeOverrides
from sam_deblur_cli.errors import VideoError
from sam_deblur_cli.masks import MaskResult
from sam_deblur_cli.pipeline import Deblurrer, DeblurSettings
from sam_deblur_cli.video.engine import VideoSettings, run_video
from sam_deblur_cli.video.resume import work_folder
from sam_deblur_cli.video.write import EncodeOptions

LOSSLESS = EncodeOptions(codec="libx264rgb", crf=0)


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    """12 frames panning over a photo with a hard cut at frame 5 (a scene-cut key frame)."""
    src = tmp_path / "pan.mp4"
    make_clip(src, panning_frames(12, step=3, cut_at=5), audio=False)
    return src


def _deblurrer() -> Deblurrer:
    settings = DeblurSettings(recipe=RecipeOverrides(model="segnafnet-gopro"), device="cpu")
    return Deblurrer(settings)


def _mask_threads(monkeypatch: pytest.MonkeyPatch, fail_at: int | None = None) -> list[str]:
    """Names of the threads that made masks, one per SAM call; call ``fail_at`` raises."""
    names: list[str] = []
    real = Deblurrer.compute_masks

    def compute_masks(self: Deblurrer, rgb: np.ndarray) -> MaskResult:
        names.append(threading.current_thread().name)
        if len(names) == fail_at:
            raise ValueError("SAM broke on this frame")
        return real(self, rgb)

    monkeypatch.setattr(Deblurrer, "compute_masks", compute_masks)
    return names


@pytest.mark.parametrize(("mask_every", "batch_frames"), [(1, 1), (4, 1), (2, 3)])
def test_masks_beside_the_network_give_the_same_frames_and_key_frames(
    tiny_env: TinyEnv,
    clip: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mask_every: int,
    batch_frames: int,
) -> None:
    deblurrer = _deblurrer()
    threads = _mask_threads(monkeypatch)
    records, videos = {}, {}
    for beside in (False, True):
        settings = VideoSettings(
            mask_every=mask_every,
            batch_frames=batch_frames,
            segment_frames=4,
            encode=LOSSLESS,
            masks_beside_network=beside,
        )
        threads.clear()
        dst = tmp_path / f"out-{beside}.mp4"
        records[beside] = run_video(deblurrer, clip, dst, settings=settings)
        videos[beside] = decoded(dst)
        here = threading.current_thread().name
        # beside: every SAM call in the masks thread; in turn: every one on this thread
        assert threads and all((name != here) == beside for name in threads)
    assert records[True]["key_frames"] == records[False]["key_frames"] == len(threads)
    assert records[True]["frames"] == 12
    times_a, frames_a, _ = videos[False]
    times_b, frames_b, _ = videos[True]
    assert times_a == times_b and len(frames_b) == 12
    for a, b in zip(frames_a, frames_b, strict=True):
        np.testing.assert_array_equal(a, b)


def test_on_the_cpu_sam_stays_on_the_network_thread_by_default(
    tiny_env: TinyEnv, clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deblurrer = _deblurrer()
    assert not deblurrer.masks_beside_network
    threads = _mask_threads(monkeypatch)
    run_video(deblurrer, clip, tmp_path / "out.mp4", settings=VideoSettings(mask_every=6))
    assert threads == [threading.current_thread().name] * 3  # frames 0, 5 (the cut), 6


def test_a_frame_whose_masks_fail_is_kept_or_named_as_when_sam_runs_in_turn(
    tiny_env: TinyEnv, clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deblurrer = _deblurrer()
    threads = _mask_threads(monkeypatch, fail_at=3)  # the third key frame: frame 2
    outcomes: dict[bool, Any] = {}
    for beside in (False, True):
        threads.clear()
        settings = VideoSettings(
            segment_frames=4, encode=LOSSLESS, keep_going_frames=True, masks_beside_network=beside
        )
        record = run_video(deblurrer, clip, tmp_path / f"kept-{beside}.mp4", settings=settings)
        threads.clear()
        strict = VideoSettings(segment_frames=4, encode=LOSSLESS, masks_beside_network=beside)
        before = threading.active_count()
        with pytest.raises(VideoError) as failed:
            run_video(deblurrer, clip, tmp_path / f"failed-{beside}.mp4", settings=strict)
        assert threading.active_count() == before  # reader, masks and writer threads joined
        outcomes[beside] = (record["kept_frames"], str(failed.value).split(" failed")[0])
    assert outcomes[True] == outcomes[False] == ([2], outcomes[False][1])
    assert outcomes[True][1].startswith("frame 2 (at ")


def test_ctrl_c_beside_keeps_whole_segments_and_a_run_in_turn_resumes_them(
    tiny_env: TinyEnv, clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flag changes no frame, so it is not part of what a resumed run must match."""
    deblurrer = _deblurrer()
    whole = tmp_path / "whole.mp4"
    settings = VideoSettings(segment_frames=4, encode=LOSSLESS, masks_beside_network=False)
    run_video(deblurrer, clip, whole, settings=settings)

    calls: list[int] = []
    stop_at = [6]
    real = Deblurrer.deblur

    def interrupted(self: Deblurrer, rgb: np.ndarray, masks: Any = None) -> np.ndarray:
        calls.append(1)
        if len(calls) == stop_at[0]:
            raise KeyboardInterrupt
        return real(self, rgb, masks)

    monkeypatch.setattr(Deblurrer, "deblur", interrupted)
    dst = tmp_path / "resumed.mp4"
    before = threading.active_count()
    beside = VideoSettings(segment_frames=4, encode=LOSSLESS, masks_beside_network=True)
    with pytest.raises(KeyboardInterrupt):
        run_video(deblurrer, clip, dst, settings=beside)
    assert threading.active_count() == before
    assert not dst.exists()
    parts = sorted(p.name for p in work_folder(dst).iterdir())
    assert parts == ["seg-000000.mp4", "settings.json"]
    calls.clear()
    stop_at[0] = 0
    record = run_video(deblurrer, clip, dst, settings=settings)
    assert record["resumed_from"] == 4 and len(calls) == 8
    for a, b in zip(decoded(whole)[1], decoded(dst)[1], strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(
    not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU (device_check.sh)"
)
def test_on_cuda_sam_runs_beside_by_default_and_the_frames_match(
    tiny_env: TinyEnv, clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = DeblurSettings(recipe=RecipeOverrides(model="segnafnet-gopro"), device="cuda")
    deblurrer = Deblurrer(settings)
    assert deblurrer.masks_beside_network
    threads = _mask_threads(monkeypatch)
    in_turn = VideoSettings(encode=LOSSLESS, masks_beside_network=False)
    run_video(deblurrer, clip, tmp_path / "in_turn.mp4", settings=in_turn)
    threads.clear()
    run_video(deblurrer, clip, tmp_path / "beside.mp4", settings=VideoSettings(encode=LOSSLESS))
    here = threading.current_thread().name
    assert threads and all(name != here for name in threads)
    frames_a, frames_b = decoded(tmp_path / "in_turn.mp4")[1], decoded(tmp_path / "beside.mp4")[1]
    for a, b in zip(frames_a, frames_b, strict=True):  # CUDA's atomic sums: 1 level at most
        assert np.abs(a.astype(np.int16) - b.astype(np.int16)).max() <= 1


@pytest.mark.parametrize("beside", [False, True])
def test_a_failing_writer_stops_the_run_with_every_thread_joined(
    tiny_env: TinyEnv, clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, beside: bool
) -> None:
    """The network stops at the writer's error while the reader and the masks thread still
    have frames to hand on: both give up their waits, and none is left running."""
    from sam_deblur_cli.video import write

    def full(self: Any, rgb: np.ndarray, pts: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(write.SegmentWriter, "write", full)
    before = threading.active_count()
    settings = VideoSettings(segment_frames=4, encode=LOSSLESS, masks_beside_network=beside)
    with pytest.raises(OSError, match="No space left"):
        run_video(_deblurrer(), clip, tmp_path / "out.mp4", settings=settings)
    assert threading.active_count() == before
    assert not (tmp_path / "out.mp4").exists()
