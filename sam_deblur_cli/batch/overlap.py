"""A batch's inputs overlapped: decoding, masks and writing beside the network.

:func:`run_overlapped` runs each input's whole job (``run_one``: :func:`.local.run_job`, so an
input's failure is recorded exactly as in a sequential run) in a worker thread, at most
``in_flight`` inputs at once, and routes the stages inside ``Deblurrer.deblur_into``:

- "deblur" (the network) runs on the calling thread, one image at a time, in job order:
  Ctrl-C interrupts it at once as before, and torch's process-wide state (a network cast to
  the run's precision, TF32, the feature layout) is touched by one thread only;
- "masks" (SAM): on CUDA in a worker thread on a CUDA stream of its own, one image at a time
  in job order, so SAM of image i+1 (and its CPU-side post-processing) runs while the
  network works on image i. On the CPU it runs on the calling thread before the same
  image's network: both stages already use every core through torch's intra-op threads, and
  the fast generator's exact-rows loops set torch's thread count process-wide for a while,
  so side by side they only contend (``benchmarks/bench_overlap.py`` measures it; README).
  With an explicit TF32 setting (process-wide) SAM stays on the calling thread on CUDA too;
- decoding and writing (numpy, PIL, files: they release the GIL) run in the worker threads
  beside everything, so image i+1 decodes and image i-1 is encoded and written while the
  network runs image i. Writes take turns in job order too, so outputs appear in the order
  a sequential run writes them.

Bounded: at most ``in_flight`` inputs are decoded and not yet written. Records come back
per job position; ``on_done`` sees them in job order. A job that raises out of ``run_one``
(a SetupError, an OutOfSpaceError), an exception in a callback, or Ctrl-C stops the run:
waiting stages give up (:class:`Cancelled`, never recorded as a failure), running ones end
(writes are atomic: whole or absent), every worker thread is joined, then it is raised.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from sam_deblur_cli.devices import side_stream

if TYPE_CHECKING:
    from sam_deblur_cli.batch.plan import Job
    from sam_deblur_cli.pipeline import Deblurrer, Record

_T = TypeVar("_T")
# The lanes: the calling thread; SAM in a worker; writing in a worker; each in job order.
MAIN, SAM, WRITE = "main", "sam", "write"
LANES = (MAIN, SAM, WRITE)
ORDER = ("masks", "deblur", "write")  # deblur_into's stages, in the order each image runs them


@dataclass(frozen=True)
class Overlap:
    """How much of a batch runs at once. ``in_flight``: inputs between decoding and written
    (1: one after the other, no threads). ``masks_beside_network``: SAM in a worker beside
    the network (None: on CUDA only, see the module docstring)."""

    in_flight: int = 3
    masks_beside_network: bool | None = None

    def lanes(self, deblurrer: Deblurrer) -> dict[str, str]:
        """Stage -> lane for this Deblurrer."""
        beside = self.masks_beside_network
        if beside is None:
            beside = deblurrer.masks_beside_network
        return {"masks": SAM if beside else MAIN, "deblur": MAIN, "write": WRITE}


class Cancelled(BaseException):
    """The run is stopping: a stage waiting for its turn gives up (not an input's failure)."""


@dataclass
class _Task:
    """A stage handed to the calling thread; the worker waits on ``future``."""

    work: Callable[[], Any]
    future: Future[Any]


@dataclass
class _Finished:
    """A worker's job is over: its record, or what it raised out of ``run_one``."""

    position: int
    record: Record | None
    error: BaseException | None


class Scheduler:
    """Turns and hand-offs for one run (a :class:`~sam_deblur_cli.pipeline.StageRunner`).

    Each lane serves job positions in order: position p enters a lane once every earlier
    position has left it (a job leaves a lane when no later stage of it uses the lane, or
    when it ends). Lane ``MAIN``'s work runs on the thread that calls :meth:`serve`.
    """

    def __init__(self, lanes: dict[str, str], device: str) -> None:
        self.lanes = lanes
        self._cond = threading.Condition()
        self._left: dict[str, set[int]] = {lane: set() for lane in LANES}
        self._turn = dict.fromkeys(LANES, 0)
        self._inbox: queue.SimpleQueue[_Task | _Finished] = queue.SimpleQueue()
        self._cancelled = False
        self._local = threading.local()
        self._stream = side_stream(device) if SAM in lanes.values() else None
        self.peak_in_flight = 0  # the most jobs started and not finished at one time
        self._in_flight = 0

    def __call__(self, stage: str, work: Callable[[], _T]) -> _T:
        position: int | None = getattr(self._local, "position", None)
        if position is None:  # not one of this run's workers
            return work()
        lane = self.lanes[stage]
        self._enter(position, stage, lane)
        if lane == MAIN:
            task = _Task(work, Future())
            with self._cond:
                if self._cancelled:
                    raise Cancelled
                self._inbox.put(task)
            result: _T = task.future.result()
            return result
        if lane == SAM and self._stream is not None:
            import torch

            with torch.cuda.stream(self._stream):
                return work()
        return work()

    def _enter(self, position: int, stage: str, lane: str) -> None:
        """Leave the lanes no later stage uses, then wait for this position's turn in ``lane``."""
        later = {self.lanes[s] for s in ORDER[ORDER.index(stage) :]}
        with self._cond:
            for other in LANES:
                if other not in later:
                    self._leave(position, other)
            while not self._cancelled and self._turn[lane] != position:
                self._cond.wait()
            if self._cancelled:
                raise Cancelled

    def _leave(self, position: int, lane: str) -> None:
        """(Lock held.) ``position`` is done with ``lane``; the turn moves past every position
        that left."""
        left = self._left[lane]
        left.add(position)
        while self._turn[lane] in left:
            left.discard(self._turn[lane])
            self._turn[lane] += 1
        self._cond.notify_all()

    def work(self, position: int, run_one: Callable[[], Record]) -> None:
        """A worker thread: one job at ``position``, then its lanes left and the end posted."""
        self._local.position = position
        finished = _Finished(position, None, None)
        try:
            finished.record = run_one()
        except Cancelled:
            pass
        except BaseException as exc:  # a SetupError etc.: serve() raises it on the caller
            finished.error = exc
        finally:
            self._local.position = None
            with self._cond:
                # An error stops the run before a later job takes the turns this one leaves.
                self._cancelled = self._cancelled or finished.error is not None
                for lane in LANES:
                    self._leave(position, lane)
            self._inbox.put(finished)

    def serve(
        self,
        jobs: Sequence[Job],
        start: Callable[[int], Callable[[], Record]],
        in_flight: int,
        on_record: Callable[[int, Record], None],
    ) -> None:
        """Run ``jobs`` (``start(i)`` gives job i's ``run_one``) at most ``in_flight`` at a
        time, doing lane MAIN's work on this thread; ``on_record`` gets each record in job
        order. Anything raised stops the run (see the module docstring)."""
        records: dict[int, Record] = {}
        reported = started = 0
        with ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="batch") as pool:
            try:
                while reported < len(jobs):
                    while started < len(jobs) and self._in_flight < in_flight:
                        pool.submit(self.work, started, start(started))
                        started, self._in_flight = started + 1, self._in_flight + 1
                        self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
                    item = self._inbox.get()
                    if isinstance(item, _Task):
                        _run_task(item)
                        continue
                    self._in_flight -= 1
                    if item.error is not None:
                        raise item.error
                    if item.record is None:  # gave up: the error that stops the run follows
                        continue
                    records[item.position] = item.record
                    while reported in records:
                        on_record(reported, records.pop(reported))
                        reported += 1
            except BaseException:
                self._cancel()
                raise  # the pool's exit joins every worker first

    def _cancel(self) -> None:
        """Stop: waiting stages raise Cancelled, queued hand-offs are refused."""
        with self._cond:
            self._cancelled = True
            self._cond.notify_all()
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _Task):
                item.future.set_exception(Cancelled())


def _run_task(task: _Task) -> None:
    """Lane MAIN's work on this thread; an input's error goes back to its worker, Ctrl-C
    (and other BaseExceptions) stop the run, and the waiting worker gives up."""
    try:
        task.future.set_result(task.work())
    except Exception as exc:
        task.future.set_exception(exc)
    except BaseException:
        task.future.set_exception(Cancelled())
        raise


def run_overlapped(
    deblurrer: Deblurrer,
    jobs: Sequence[Job],
    run_one: Callable[[Job], Record],
    on_record: Callable[[int, Record], None],
    overlap: Overlap,
    *,
    on_start: Callable[[Job], None] | None = None,
) -> Scheduler:
    """Run ``run_one(job)`` for every job with their stages overlapped (see the module
    docstring); ``on_start`` when a job's decoding begins, ``on_record`` with each record in
    job order. Returns the scheduler (its ``peak_in_flight``)."""
    scheduler = Scheduler(overlap.lanes(deblurrer), deblurrer.placement.device)

    def start(position: int) -> Callable[[], Record]:
        job = jobs[position]
        if on_start is not None:
            on_start(job)
        return lambda: run_one(job)

    with deblurrer.stages_run_by(scheduler):
        scheduler.serve(jobs, start, max(1, overlap.in_flight), on_record)
    return scheduler
