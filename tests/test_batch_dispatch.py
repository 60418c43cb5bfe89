"""batch/dispatch.run_jobs (photos and videos of one list, records in job order, progress
through RunProgress) and batch/local.recording_failure (the one failure recorder)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest
from tiny_models import TinyEnv, save_photo
from video_clips import blurred_frames, make_clip

from sam_deblur_cli.amg import RecipeOverrides
from sam_deblur_cli.batch.dispatch import RunProgress, run_jobs
from sam_deblur_cli.batch.local import recording_failure
from sam_deblur_cli.batch.plan import Job, StoreJob
from sam_deblur_cli.errors import ImageReadError, UsageError, WeightsError
from sam_deblur_cli.pipeline import DeblurSettings, FileOptions, Record, blank_record

PLAIN = DeblurSettings(recipe=RecipeOverrides(model="nafnet-gopro"), device="cpu", tlc=False)


def _record() -> Record:
    return blank_record(Path("in.png"), Path("out.png"), PLAIN)


def test_an_input_error_becomes_the_record_and_the_run_goes_on() -> None:
    record = _record()
    with recording_failure(record, "on in.png"):
        raise ImageReadError("in.png is truncated; re-export it.")
    assert (record["status"], record["error"]) == ("failed", "in.png is truncated; re-export it.")
    assert list(record) == list(_record())  # no field added, none moved


def test_an_unforeseen_error_is_recorded_with_its_type_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    record = _record()
    with caplog.at_level(logging.INFO, "sam_deblur_cli"), recording_failure(record, "on x"):
        raise ValueError("odd shape")
    assert (record["status"], record["error"]) == ("failed", "ValueError: odd shape")
    assert [r.getMessage() for r in caplog.records] == ["unexpected failure on x"]
    assert caplog.records[0].exc_info is not None


@pytest.mark.parametrize("error", [WeightsError("no weights"), KeyboardInterrupt()])
def test_set_up_errors_and_ctrl_c_stop_the_run(error: BaseException) -> None:
    record = _record()
    with pytest.raises(type(error)), recording_failure(record, "on in.png"):
        raise error
    assert record["status"] == "pending"


class Log(RunProgress):
    """Every event, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def loading(self) -> AbstractContextManager[Any]:
        self.events.append(("loading", None))
        return super().loading()

    @contextmanager
    def photos(self, count: int, *, on_ray: bool) -> Iterator[None]:
        self.events.append(("photos", (count, on_ray)))
        yield
        self.events.append(("photos end", None))

    def started(self, job: Job) -> None:
        self.events.append(("started", job.src.name))

    @contextmanager
    def video(self, job: Job) -> Iterator[Any]:
        frames: list[int] = []
        yield lambda done, total, fps: frames.append(done)
        self.events.append(("frames", frames))

    def done(self, job: Job | StoreJob, record: Record) -> None:
        self.events.append(("done", (Path(job.src).name, record["status"])))


def test_photos_and_videos_come_back_in_job_order(tiny_env: TinyEnv, tmp_path: Path) -> None:
    a, c = save_photo(tmp_path / "a.png"), save_photo(tmp_path / "c.png")
    clip = tmp_path / "b.mp4"
    make_clip(clip, blurred_frames(3), audio=False)
    broken = tmp_path / "d.png"
    broken.write_bytes(b"not a png")
    jobs = [Job(src, tmp_path / "out" / src.name) for src in (a, clip, c, broken)]
    log = Log()
    records = run_jobs(jobs, PLAIN, FileOptions(), progress=log)
    assert [Path(r["input"]).name for r in records] == ["a.png", "b.mp4", "c.png", "d.png"]
    assert [r["status"] for r in records] == ["ok", "ok", "ok", "failed"]
    assert records[1]["frames"] == 3 and "width" in records[0]
    # The photos run first as one stretch, then each video; d.png failed in its turn. Photos
    # overlap (batch/overlap.py): a photo may start before the one ahead is done, but each
    # starts before it is done and they are done in job order.
    events = log.events
    start, end = events.index(("photos", (3, False))), events.index(("photos end", None))
    assert events[:start] == [("loading", None)]
    photo_events = events[start + 1 : end]
    assert [e for e in photo_events if e[0] == "done"] == [
        ("done", ("a.png", "ok")),
        ("done", ("c.png", "ok")),
        ("done", ("d.png", "failed")),
    ]
    for name, status in (("a.png", "ok"), ("c.png", "ok"), ("d.png", "failed")):
        started = photo_events.index(("started", name))
        assert started < photo_events.index(("done", (name, status)))
    assert len(photo_events) == 6
    assert events[end + 1 :] == [("frames", [1, 2, 3]), ("done", ("b.mp4", "ok"))]


def test_inputs_settled_by_the_checks_load_no_model(tiny_env: TinyEnv, tmp_path: Path) -> None:
    done = save_photo(tmp_path / "out" / "a.png")
    broken = tmp_path / "b.png"
    broken.write_bytes(b"")
    jobs = [Job(save_photo(tmp_path / "a.png"), done), Job(broken, tmp_path / "out" / "b.png")]
    log = Log()
    records = run_jobs(jobs, DeblurSettings(recipe=RecipeOverrides(model="no-such")), progress=log)
    assert [r["status"] for r in records] == ["skipped", "failed"]
    assert log.events == [("done", ("a.png", "skipped")), ("done", ("b.png", "failed"))]


def test_store_jobs_need_ray_and_videos_take_no_masks_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--engine ray"):
        run_jobs([StoreJob("s3://b/a.png", "s3://b/out/a.png")], PLAIN)
    clip = Job(tmp_path / "a.mp4", tmp_path / "b.mp4", masks_file=tmp_path / "m.png")
    with pytest.raises(UsageError, match="a video gets its masks from SAM"):
        run_jobs([clip], PLAIN)
