"""One way to run a list of planned inputs: each job to the engine that takes it.

:func:`run_jobs` takes the jobs of :mod:`.plan` (local :class:`.plan.Job`s, and with Ray
:class:`.plan.StoreJob`s too) and returns one record per job, in job order. Photos go to
the local runner (:func:`.local.run_batch`) or, with ``ray_options``, to the Ray runner
(:func:`.ray.run_batch_ray`); videos always run here, through the video engine
(:func:`sam_deblur_cli.video.engine.run_video`), one after the other. What the run shows
goes through a :class:`RunProgress` (the command line draws its bars and lines from it).

Guarantees (those of every engine): every check that needs no model runs before one is
built or downloaded, and when those checks settle every input no model is loaded; a failing
input is recorded (:func:`.local.recording_failure`) and the run goes on; a SetupError,
a full disk or Ctrl-C stops it with no output half-written.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, Protocol

from sam_deblur_cli.batch.plan import Job, StoreJob
from sam_deblur_cli.errors import UsageError
from sam_deblur_cli.naming import is_video_path

if TYPE_CHECKING:
    from sam_deblur_cli.batch.ray import RayOptions
    from sam_deblur_cli.pipeline import Deblurrer, DeblurSettings, FileOptions, Record
    from sam_deblur_cli.video.engine import FrameCallback, VideoSettings


class RunProgress(Protocol):
    """What :func:`run_jobs` reports as it goes; the bodies here show nothing (a subclass
    keeps them for what it does not show; the command line implements all of them).

    The context managers open and close with a stretch of work, so a display can live
    exactly as long as it: ``loading`` around building the models (what it yields is the
    weights download progress, see ``weights.ensure_weights``), ``photos`` around a stretch
    of photos (``on_ray``: on the Ray engine), ``video`` around one video (what it yields,
    if not None, is called per frame). ``done`` receives each final record (photos as they
    finish, skipped ones first; a video's after its ``video`` stretch closed).
    """

    def loading(self) -> AbstractContextManager[Any]:
        return nullcontext(None)

    def notes(self, notes: list[str]) -> None:
        """How this run's masks depart from those the model was trained on (sentences)."""
        return None

    def photos(self, count: int, *, on_ray: bool) -> AbstractContextManager[object]:
        return nullcontext()

    def started(self, job: Job) -> None:
        """A local photo is about to be deblurred."""
        return None

    def video(self, job: Job) -> AbstractContextManager[FrameCallback | None]:
        return nullcontext(None)

    def done(self, job: Job | StoreJob, record: Record) -> None:
        """An input's record is final."""
        return None


class _Silent(RunProgress):
    """Shows nothing."""


def run_jobs(
    jobs: Sequence[Job | StoreJob],
    settings: DeblurSettings,
    options: FileOptions | None = None,
    *,
    video: VideoSettings | None = None,
    ray_options: RayOptions | None = None,
    progress: RunProgress | None = None,
) -> list[Record]:
    """Deblur every job; one record per job, in job order.

    ``ray_options`` None: everything on this machine (store jobs are refused); otherwise
    the photos on Ray and the videos here. Raises UsageError for what no input can get
    past (bad video options, a masks file for a video, ``--overlay`` for a model without
    masks, an output folder that cannot be written), before any model is loaded.
    """
    from sam_deblur_cli.pipeline import FileOptions
    from sam_deblur_cli.video.engine import VideoSettings

    options, video = options or FileOptions(), video or VideoSettings()
    progress = progress or _Silent()
    check_jobs(jobs, settings, options, video)
    settled = _preflight(jobs, settings, options)
    if len(settled) == len(jobs):  # all done already, or all unreadable: no model needed
        for index, job in enumerate(jobs):
            progress.done(job, settled[index])
        return [settled[i] for i in range(len(jobs))]
    # The engines meet the settled inputs again, in their turn, as in any other run.
    if ray_options is None:
        return _here(_local(jobs), settings, options, video, progress)
    videos = {i for i, job in enumerate(jobs) if is_video_path(job.src)}
    photos = [job for i, job in enumerate(jobs) if i not in videos]
    on_ray = iter(_on_ray(photos, settings, options, ray_options, progress) if photos else [])
    here = _local([jobs[i] for i in sorted(videos)])
    local = iter(_here(here, settings, options, video, progress) if here else [])
    return [next(local) if i in videos else next(on_ray) for i in range(len(jobs))]


def check_jobs(
    jobs: Sequence[Job | StoreJob],
    settings: DeblurSettings,
    options: FileOptions,
    video: VideoSettings,
) -> None:
    """The checks of a whole run that need no model: video options, no masks file given to
    a video, and ``overlay`` only for a model that takes masks (UsageError otherwise)."""
    video.check()
    for job in jobs:
        if isinstance(job, Job) and job.masks_file is not None and is_video_path(job.src):
            raise UsageError("--masks belongs to a photo; a video gets its masks from SAM.")
    if options.overlay:
        from sam_deblur_cli.weights import load_manifest

        entry = load_manifest().get(settings.recipe.model)
        if not entry.needs_masks:
            raise UsageError(
                f"--overlay draws the SAM masks a model uses, and {entry.name} takes none; "
                "drop --overlay or pick a model that takes masks."
            )


def _preflight(
    jobs: Sequence[Job | StoreJob], settings: DeblurSettings, options: FileOptions
) -> dict[int, Record]:
    """The records of the local jobs settled with no model (existing outputs skipped,
    unreadable inputs failed), by job index; SetupErrors stop the run here."""
    from sam_deblur_cli.batch.plan import preflight
    from sam_deblur_cli.pipeline import blank_record

    local = {i: job for i, job in enumerate(jobs) if isinstance(job, Job)}
    indices = list(local)
    verdicts = preflight(
        list(local.values()), overwrite=options.overwrite, max_pixels=options.max_pixels
    )
    records: dict[int, Record] = {}
    for position, (status, error) in sorted(verdicts.items()):
        index = indices[position]
        record = blank_record(local[index].src, local[index].dst, settings)
        record["status"], record["error"] = status, error
        records[index] = record
    return records


def _local(jobs: Sequence[Job | StoreJob]) -> list[Job]:
    """The jobs, every one on this machine (store jobs run on Ray only)."""
    local = [job for job in jobs if isinstance(job, Job)]
    if len(local) != len(jobs):
        raise UsageError("s3:// and gs:// inputs and outputs need --engine ray; add it.")
    return local


def _here(
    jobs: Sequence[Job],
    settings: DeblurSettings,
    options: FileOptions,
    video: VideoSettings,
    progress: RunProgress,
) -> list[Record]:
    """Local jobs through one Deblurrer: the photos as one batch, then each video."""
    from sam_deblur_cli.pipeline import Deblurrer

    # SAM only when some input has no mask file (and the model takes masks at all).
    uses_sam = any(job.masks_file is None for job in jobs)
    with progress.loading() as fetching:
        deblurrer = Deblurrer(settings, load_sam=uses_sam, progress=fetching)
    notes = deblurrer.departures() if uses_sam and deblurrer.needs_masks else []
    if notes:
        progress.notes(notes)
    videos = {i: job for i, job in enumerate(jobs) if is_video_path(job.src)}
    images = [job for i, job in enumerate(jobs) if i not in videos]
    records = iter(_photos(deblurrer, images, options, progress) if images else [])
    done = {
        i: _video(deblurrer, job, video, options.overwrite, progress) for i, job in videos.items()
    }
    return [done[i] if i in done else next(records) for i in range(len(jobs))]


def _photos(
    deblurrer: Deblurrer, jobs: Sequence[Job], options: FileOptions, progress: RunProgress
) -> list[Record]:
    from sam_deblur_cli.batch.local import BatchCallbacks, run_batch

    callbacks = BatchCallbacks(on_start=progress.started, on_done=progress.done)
    with progress.photos(len(jobs), on_ray=False):
        return run_batch(deblurrer, jobs, options=options, callbacks=callbacks)


def _video(
    deblurrer: Deblurrer,
    job: Job,
    settings: VideoSettings,
    overwrite: bool,
    progress: RunProgress,
) -> Record:
    """One video's record; its failure (not the run's) becomes the record."""
    from sam_deblur_cli.batch.local import recording_failure
    from sam_deblur_cli.video.engine import run_video

    record = deblurrer.new_record(job.src, job.dst)
    with progress.video(job) as on_frame, recording_failure(record, f"on {job.src}"):
        record = run_video(
            deblurrer, job.src, job.dst, settings=settings, overwrite=overwrite, on_frame=on_frame
        )
    progress.done(job, record)
    return record


def _on_ray(
    jobs: Sequence[Job | StoreJob],
    settings: DeblurSettings,
    options: FileOptions,
    ray_options: RayOptions,
    progress: RunProgress,
) -> list[Record]:
    """Photo jobs on Ray; ``progress.done`` follows the result rows (any order)."""
    from sam_deblur_cli.batch.local import BatchCallbacks
    from sam_deblur_cli.batch.ray import run_batch_ray

    callbacks = BatchCallbacks(on_done=progress.done)
    with progress.photos(len(jobs), on_ray=True):
        return run_batch_ray(settings, jobs, options, ray_options=ray_options, callbacks=callbacks)
