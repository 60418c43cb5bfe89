"""The Ray batch runner: the local batch's jobs on a Ray cluster (or a local Ray instance).

Same guarantees as :mod:`.local`: one record per job, in job order, with the same fields;
existing outputs are skipped unless ``overwrite``; a failing input is recorded and the run
goes on; a SetupError stops the run; outputs are written atomically, so a rerun after a
crash resumes. Ray Data carries only rows of paths (``index``, ``src``, ``dst``, ``masks``)
into a pool of actors; each actor holds one Deblurrer (SAM + network, loaded once) and does
the decoding, masks, deblurring and writing itself, returning a small row per job
(``index``, ``record`` as JSON, worker facts). Pixels and label maps never cross Ray's
object store, and one corrupt file fails only its own row. Jobs with an object-store end
(:class:`.plan.StoreJob`, ``s3://`` / ``gs://``) go the same way; the actor moves their
bytes through :mod:`.stores`.

Ray is imported inside the functions (``pip install 'sam-deblur-cli[ray]'``).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from sam_deblur_cli import errors
from sam_deblur_cli.batch import stores
from sam_deblur_cli.batch.plan import Job, StoreJob
from sam_deblur_cli.errors import SetupError, UsageError

if TYPE_CHECKING:
    from sam_deblur_cli.batch.local import BatchCallbacks
    from sam_deblur_cli.pipeline import DeblurSettings, FileOptions, Record

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'sam-deblur-cli[ray]'"
# Environment the workers need to find the same weights (shared filesystems), stay offline
# and reach the same object stores.
FORWARDED_ENV = (
    "SAM_DEBLUR_WEIGHTS",
    "SAM_DEBLUR_HOME",
    "HF_HOME",
    "HF_HUB_OFFLINE",
    *stores.CREDENTIAL_ENV,
)
Workers = int | tuple[int, int] | None


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide the run goes.

    ``address``: None starts a local Ray instance (or uses the one this process already
    joined); ``"auto"`` joins the cluster of this node; ``"ray://HOST:PORT"`` a remote one.
    ``workers``: actors in the pool, N or (MIN, MAX); None: as many as the reservations fit.
    ``gpus_per_worker``: GPUs reserved per actor (fractions share a GPU); None: 1 when the
    cluster has GPUs, else 0. ``cpus_per_worker``: CPUs reserved per actor.
    """

    address: str | None = None
    workers: Workers = None
    gpus_per_worker: float | None = None
    cpus_per_worker: float = 1.0


def parse_workers(text: str) -> tuple[int, int]:
    """``"4"`` -> (4, 4), ``"1-8"`` -> (1, 8); UsageError for anything else."""
    low, _, high = text.partition("-")
    try:
        pair = (int(low), int(high or low))
    except ValueError:
        raise UsageError(
            f"--workers {text!r} is not N or MIN-MAX; e.g. --workers 4 or 1-8."
        ) from None
    if pair[0] < 1 or pair[1] < pair[0]:
        raise UsageError(f"--workers {text!r} needs 1 <= MIN <= MAX; e.g. --workers 1-8.")
    return pair


def run_batch_ray(
    settings: DeblurSettings,
    jobs: Iterable[Job | StoreJob],
    options: FileOptions | None = None,
    *,
    ray_options: RayOptions | None = None,
    callbacks: BatchCallbacks | None = None,
    worker_log: list[dict[str, Any]] | None = None,
) -> list[Record]:
    """Deblur every job on Ray; returns one record per job, in job order (as ``run_batch``).

    ``callbacks.on_done`` sees each record as its row comes back (any order); skipped jobs
    are reported once the run is over. ``worker_log``, when given, receives one dict per
    job that ran (``index``, ``pid``, ``node``, ``gpu_ids``). Raises UsageError when Ray is
    not installed or the reservations cannot be met, and the run's SetupError if the
    actors cannot load the models. Store jobs' existing outputs are found by one listing.
    """
    from sam_deblur_cli.batch.local import BatchCallbacks
    from sam_deblur_cli.pipeline import FileOptions

    options = options or FileOptions()
    callbacks = callbacks or BatchCallbacks()
    ray_options = ray_options or RayOptions()
    jobs = list(jobs)
    _check_settings(settings)
    done = set() if options.overwrite else _existing(jobs)
    todo = [i for i in range(len(jobs)) if i not in done]
    records: dict[int, Record] = {}
    if todo:
        ray = _import_ray()
        _connect(ray, ray_options.address)
        for row in _guarded(ray, _run_rows(ray, settings, options, ray_options, jobs, todo)):
            record = json.loads(row["record"])
            if record["status"] == "setup_error":
                raise _setup_error(record)
            index = int(row["index"])
            records[index] = record
            if worker_log is not None:
                worker_log.append({"index": index, **json.loads(row["worker"])})
            if callbacks.on_done is not None:
                callbacks.on_done(jobs[index], record)
    template = next(iter(records.values()), None) or _driver_template(settings)
    for index, job in enumerate(jobs):
        if index not in records:
            records[index] = _skipped(template, job)
            if callbacks.on_done is not None:
                callbacks.on_done(job, records[index])
    return [records[i] for i in range(len(jobs))]


def _existing(jobs: Sequence[Job | StoreJob]) -> set[int]:
    """Indices of the jobs whose output exists (resume)."""
    stored = stores.existing_outputs(job.dst for job in jobs if isinstance(job, StoreJob))
    return {
        i
        for i, job in enumerate(jobs)
        if (job.dst in stored if isinstance(job, StoreJob) else job.dst.exists())
    }


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # the extra installs Ray Data too
    except ImportError:
        raise UsageError(f"--engine ray needs Ray Data; install it with {INSTALL_HINT}.") from None
    return ray


def _guarded(ray: Any, rows: Iterable[dict[str, Any]]) -> Iterable[dict[str, Any]]:
    """The rows, with Ray's own failures (a pool that cannot start, a lost cluster) turned
    into a SetupError; the rows of every finished job are kept on disk, so a rerun resumes."""
    try:
        yield from rows
    except ray.exceptions.RayError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SetupError(
            f"The Ray run stopped ({first}); finished outputs are kept, so rerun the same "
            "command to resume (add -v for Ray's log)."
        ) from exc


def _connect(ray: Any, address: str | None) -> None:
    """Join ``address`` or start a local instance (all CPUs, no dashboard), once per process."""
    if ray.is_initialized():
        return
    try:
        if address is None:
            ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UsageError(
            f"Cannot reach the Ray cluster at {address or 'this machine'} ({exc}); "
            "start one with `ray start --head` or check --ray-address."
        ) from None


def _check_settings(settings: DeblurSettings) -> None:
    """Fail before any worker starts on what the driver can check: model name and tile."""
    from sam_deblur_cli import weights
    from sam_deblur_cli.pipeline import normalize_tile

    weights.load_manifest().get(settings.recipe.model)
    normalize_tile(settings.tile)


def pool_size(
    resources: dict[str, float], ray_options: RayOptions, jobs: int
) -> tuple[int, int, float, float]:
    """(min, max, cpus, gpus) per actor for a cluster offering ``resources``.

    Reservations that the cluster cannot hold even for the smallest pool are a UsageError,
    not a run that waits forever for an actor (or a read task) that never gets scheduled.
    """
    cpus_total, gpus_total = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    gpus = ray_options.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if gpus_total >= 1 else 0.0
    cpus = ray_options.cpus_per_worker
    fit = math.floor(cpus_total / cpus) if cpus > 0 else jobs
    if gpus > 0:
        fit = min(fit, math.floor(gpus_total / gpus + 1e-9))
    if ray_options.workers is None:
        low, high = 1, max(1, min(fit, jobs))
    elif isinstance(ray_options.workers, int):
        low = high = ray_options.workers
    else:
        low, high = ray_options.workers
    if low > fit:
        raise UsageError(
            f"{low} worker(s) with {cpus:g} CPU and {gpus:g} GPU each do not fit the cluster "
            f"({cpus_total:g} CPUs, {gpus_total:g} GPUs); ask for fewer --workers or less "
            "--gpus-per-worker."
        )
    return low, min(high, max(low, jobs)), cpus, gpus


def _run_rows(
    ray: Any,
    settings: DeblurSettings,
    options: FileOptions,
    ray_options: RayOptions,
    jobs: Sequence[Job | StoreJob],
    todo: Sequence[int],
) -> Iterable[dict[str, Any]]:
    """Stream the result rows of the ``todo`` jobs from an actor pool (any order)."""
    from ray.data import ActorPoolStrategy, DataContext

    low, high, cpus, gpus = pool_size(ray.cluster_resources(), ray_options, len(todo))
    context = DataContext.get_current()
    context.enable_progress_bars = False  # the command line draws its own, from the rows
    items = [
        {
            "index": i,
            "src": str(jobs[i].src),
            "dst": str(jobs[i].dst),
            "masks": _masks(jobs[i]),
            "store": isinstance(jobs[i], StoreJob),
        }
        for i in todo
    ]
    # One row per block keeps every actor busy and bounds what a dead actor's retry redoes
    # (an image takes seconds, a block milliseconds); past 10k rows, blocks grow.
    blocks = min(len(items), max(10_000, high * 64))
    env = {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}
    compute = (
        ActorPoolStrategy(size=low)
        if low == high
        else ActorPoolStrategy(min_size=low, max_size=high, initial_size=high)
    )
    dataset = ray.data.from_items(items, override_num_blocks=blocks).map_batches(
        DeblurActor,
        fn_constructor_kwargs={"settings": asdict(settings), "options": asdict(options)},
        batch_size=1,
        batch_format="numpy",
        compute=compute,
        num_cpus=cpus,
        num_gpus=gpus,
        runtime_env={"env_vars": env} if env else None,
    )
    yield from dataset.iter_rows()


class DeblurActor:
    """One Ray actor: a Deblurrer loaded once, then one result row per job row.

    Set-up errors are kept and returned as rows (status ``setup_error``) instead of raised:
    Ray would otherwise retry a constructor that can never succeed, and the driver turns the
    first such row into the run's SetupError, as the local runner raises it.
    """

    def __init__(self, settings: dict[str, Any], options: dict[str, Any]) -> None:
        from sam_deblur_cli.amg import RecipeOverrides
        from sam_deblur_cli.pipeline import Deblurrer, DeblurSettings, FileOptions

        self.options = FileOptions(**options)
        self.error: errors.SamDeblurError | None = None
        self.deblurrer: Deblurrer | None = None
        recipe = RecipeOverrides(**settings.pop("recipe"))  # asdict flattened it to a dict
        try:
            self.deblurrer = Deblurrer(DeblurSettings(recipe=recipe, **settings))
        except errors.SetupError as exc:
            self.error = exc
        self.worker = json.dumps(_worker_facts())

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        """numpy columns (index, src, dst, masks, store) -> columns (index, record as JSON,
        worker)."""
        import numpy as np

        rows = zip(batch["src"], batch["dst"], batch["masks"], batch["store"], strict=True)
        records = [
            self._one(str(src), str(dst), str(masks), bool(store))
            for src, dst, masks, store in rows
        ]
        return {
            "index": np.asarray(batch["index"]),
            "record": np.array([json.dumps(record) for record in records], dtype=object),
            "worker": np.array([self.worker] * len(records), dtype=object),
        }

    def _one(self, src: str, dst: str, masks: str, store: bool) -> Record | dict[str, Any]:
        """The job's record, or the row of a set-up error (:func:`_setup_record`)."""
        from pathlib import Path

        from sam_deblur_cli.batch.local import run_job, timed_read

        job = (
            StoreJob(src, dst)
            if store
            else Job(Path(src), Path(dst), Path(masks) if masks else None)
        )
        if self.deblurrer is None:
            return _setup_record(job, self.error)
        try:
            if isinstance(job, StoreJob):
                return stores.run_store_job(self.deblurrer, job, self.options)
            local = job
            return run_job(
                self.deblurrer, local, self.options, lambda: timed_read(local.src, self.options)
            )
        except errors.SetupError as exc:
            return _setup_record(job, exc)


def _masks(job: Job | StoreJob) -> str:
    return "" if isinstance(job, StoreJob) or job.masks_file is None else str(job.masks_file)


def _setup_record(job: Job | StoreJob, exc: BaseException | None) -> dict[str, Any]:
    """Not a Record: the row that carries an actor's SetupError to the driver."""
    return {
        "input": str(job.src),
        "output": str(job.dst),
        "status": "setup_error",
        "error": str(exc),
        "error_type": type(exc).__name__,
    }


def _setup_error(record: dict[str, Any]) -> SetupError:
    """The SetupError an actor reported, as its own class when the library has it."""
    kind = getattr(errors, str(record.get("error_type")), SetupError)
    if not (isinstance(kind, type) and issubclass(kind, SetupError)):
        kind = SetupError
    return kind(record["error"])


def _worker_facts() -> dict[str, Any]:
    import ray

    context = ray.get_runtime_context()
    return {
        "pid": os.getpid(),
        "node": context.get_node_id(),
        "gpu_ids": [str(gpu) for gpu in ray.get_gpu_ids()],
    }


def _driver_template(settings: DeblurSettings) -> dict[str, Any]:
    """Fields of a skipped record when no actor ran (every output existed): the run's model,
    tile and TLC, and the device as this machine resolves it (no GPU required)."""
    from sam_deblur_cli import weights
    from sam_deblur_cli.devices import resolve
    from sam_deblur_cli.pipeline import normalize_tile

    entry = weights.load_manifest().get(settings.recipe.model)
    placement = resolve(settings.device, settings.precision, require_gpu=False)
    return {
        "model": entry.name,
        "device": placement.device,
        "precision": placement.precision,
        "tile": normalize_tile(settings.tile),
        "tlc": entry.tlc if settings.tlc is None else settings.tlc,
    }


def _skipped(template: Record | dict[str, Any], job: Job | StoreJob) -> Record:
    """A skipped record with the local runner's fields (``Deblurrer.new_record``); the
    model, device, precision, tile and TLC from ``template``."""
    return {
        "input": str(job.src),
        "output": str(job.dst),
        "status": "skipped",
        "error": None,
        "seconds": {},
        "masks": None,
        "groups": None,
        "model": template["model"],
        "device": template["device"],
        "precision": template["precision"],
        "tile": template["tile"],
        "tlc": template["tlc"],
    }
