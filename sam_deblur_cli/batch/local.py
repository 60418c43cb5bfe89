"""The local batch runner: one loaded Deblurrer over many jobs, on this machine.

Guarantees (the ones any other engine must keep too): records come back in job order,
one per job; an existing output is skipped unless ``overwrite``; a failing input is
recorded and the run goes on; a SetupError or Ctrl-C stops it and no output is left
half-written (the Deblurrer writes atomically); so does a full disk (``OutOfSpaceError``,
which counts the inputs not attempted). Temporary files a killed run left in the output
folders are removed first. Inputs overlap (:mod:`.overlap`): while the network runs on one
image, the next is decoded (and on CUDA segmented) and the previous one written, with at most
``Overlap.in_flight`` inputs in flight.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sam_deblur_cli.batch.overlap import Overlap, run_overlapped
from sam_deblur_cli.batch.plan import Job, StoreJob
from sam_deblur_cli.errors import InputError, OutOfSpaceError, SetupError, UsageError
from sam_deblur_cli.files import remove_stale_temporaries

if TYPE_CHECKING:
    from sam_deblur_cli.imageio import Picture
    from sam_deblur_cli.pipeline import Deblurrer, FileOptions, Record

logger = logging.getLogger(__name__)


@dataclass
class BatchCallbacks:
    """Progress hooks of :func:`run_batch`; each receives the job or its finished record
    (the Ray runner's jobs may be store jobs)."""

    on_start: Callable[[Job], None] | None = None
    on_done: Callable[[Job | StoreJob, Record], None] | None = None


def run_batch(
    deblurrer: Deblurrer,
    jobs: Iterable[Job],
    *,
    options: FileOptions | None = None,
    callbacks: BatchCallbacks | None = None,
    overlap: Overlap | None = None,
) -> list[Record]:
    """Deblur every job; returns one record per job, in job order.

    Existing outputs are skipped (resume) unless ``options.overwrite``. ``overlap``: how
    many inputs are in flight and where SAM runs (default :class:`.overlap.Overlap`: decoding
    and writing beside the network, SAM too on CUDA; ``in_flight=1``: one after the other).
    A failing input is recorded (status "failed", error message) and the batch goes on; a
    SetupError or KeyboardInterrupt stops it (outputs are written atomically, so none is left
    half done). ``callbacks.on_start`` runs when a job's decoding begins, ``on_done`` in job
    order; both on the calling thread.
    """
    from sam_deblur_cli.pipeline import FileOptions

    options = options or FileOptions()
    callbacks = callbacks or BatchCallbacks()
    overlap = overlap or Overlap()
    jobs = list(jobs)
    if not deblurrer.needs_masks and any(job.masks_file is not None for job in jobs):
        raise UsageError(
            f"{deblurrer.entry.name} takes no masks; drop --masks or pick a model that does."
        )
    for folder in dict.fromkeys(job.dst.parent for job in jobs):
        remove_stale_temporaries(folder)  # a killed run's; a live run's are locked and kept
    records: dict[int, Record] = {}
    todo = []
    for index, job in enumerate(jobs):
        if job.dst.exists() and not options.overwrite:
            records[index] = {**deblurrer.new_record(job.src, job.dst), "status": "skipped"}
            _notify(callbacks.on_done, job, records[index])
        else:
            todo.append(index)

    def one(job: Job) -> Record:
        return run_job(deblurrer, job, options, lambda: timed_read(job.src, options))

    def finished(position: int, record: Record) -> None:
        records[todo[position]] = record
        _notify(callbacks.on_done, jobs[todo[position]], record)

    try:
        if overlap.in_flight <= 1:
            for position, index in enumerate(todo):
                _notify(callbacks.on_start, jobs[index])
                finished(position, one(jobs[index]))
        else:
            pending = [jobs[index] for index in todo]
            run_overlapped(deblurrer, pending, one, finished, overlap, on_start=callbacks.on_start)
    except OutOfSpaceError as exc:
        left = len(todo) - sum(index in records for index in todo)
        raise OutOfSpaceError(
            f"{exc} Stopped there: {left} of {len(jobs)} input(s) not done "
            "(the next run does them)."
        ) from exc
    return [records[i] for i in range(len(jobs))]


def run_job(
    deblurrer: Deblurrer,
    job: Job,
    options: FileOptions,
    read: Callable[[], tuple[Picture, float]],
) -> Record:
    """One job's record: ``read()`` gives the decoded input and its seconds, then the
    Deblurrer does the rest. An input's failure is recorded (status "failed"); a SetupError
    or KeyboardInterrupt propagates. Every engine runs its jobs through this function."""
    record = deblurrer.new_record(job.src, job.dst)
    with recording_failure(record, f"on {job.src}"):
        picture, record["seconds"]["read"] = read()
        deblurrer.deblur_into(record, job.src, job.dst, job.masks_file, options, picture)
    return record


@contextmanager
def recording_failure(record: Record, doing: str) -> Iterator[None]:
    """Run the block for one input; its failure becomes ``record``'s outcome (status
    "failed", ``error`` the message) and the run goes on. A SetupError, Ctrl-C or any other
    BaseException propagates. An unforeseen exception (not an InputError) also logs its
    traceback (shown with -v) as "unexpected failure ``doing``". The one failure recorder
    of every engine: photos (:func:`run_job`), uploads (``stores``) and videos."""
    try:
        yield
    except SetupError:
        raise
    except InputError as exc:
        record["status"], record["error"] = "failed", str(exc)
    except Exception as exc:  # one input's unforeseen failure must not end the run
        logger.info("unexpected failure %s", doing, exc_info=True)
        record["status"], record["error"] = "failed", f"{type(exc).__name__}: {exc}"


def timed_read(src: Path, options: FileOptions) -> tuple[Picture, float]:
    """Decode ``src`` as the run's options say; returns the picture and the seconds it took."""
    from sam_deblur_cli.imageio import read_image

    start = time.perf_counter()
    picture = read_image(src, **options.read_kwargs())
    return picture, round(time.perf_counter() - start, 4)


def _notify(hook: Callable[..., None] | None, *args: Any) -> None:
    if hook is not None:
        hook(*args)
