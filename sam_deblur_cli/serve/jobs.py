"""The server's work, without the web framework: jobs, one worker per device, models loaded once.

A :class:`Service` owns one private temp folder (``tempfile.mkdtemp``, mode 0700), one worker
thread and the Deblurrers it has loaded (one per model, on the service's device). Uploads are
written into a sub-folder of that folder, decoded there and removed when their job ends; the
results (encoded bytes) are kept in memory for the page to fetch, the oldest finished jobs
dropped first.

Concurrency: one job at a time holds ``device_lock`` (one deblur at a time per device); at
most ``queue_size`` jobs wait for it, and a job beyond that is refused with :class:`QueueFull`
(the HTTP layer answers 503 with Retry-After). With ``masks_beside_network`` (by default on
CUDA) a masks thread makes the SAM masks of the first waiting job, on a CUDA stream of its
own, while the worker runs the network of the current one; the worker then takes those
masks (or the error making them raised) as if it had made them. One SAM run at a time
(``sam_lock``), one job ahead at most. A waiting job is cancelled by :meth:`ServeJob.cancel`
or, for page jobs, when nobody has asked for it for ``abandon_after`` seconds; a running job
stops at the next stage boundary (masks, deblur, write: torch calls are not interruptible).

Pixels are made exactly as the CLI makes them: ``imageio.read_image``, the Deblurrer's
``compute_masks`` and ``deblur``, ``imageio.picture_with`` and ``write_image`` (quality 95 by
default), and ``masks.save.write_format`` for mask files.
"""

from __future__ import annotations

import collections
import logging
import re
import shutil
import tempfile
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sam_deblur_cli.errors import InputError, SamDeblurError, UsageError

if TYPE_CHECKING:
    from sam_deblur_cli.imageio import Picture
    from sam_deblur_cli.masks import MaskResult
    from sam_deblur_cli.pipeline import Deblurrer

logger = logging.getLogger(__name__)

JobKind = Literal["deblur", "masks"]
JobState = Literal["queued", "running", "done", "failed", "cancelled"]
MASK_FORMATS = ("segmask", "overlay")
MEDIA_TYPES = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "TIFF": "image/tiff",
    "WEBP": "image/webp",
    "BMP": "image/bmp",
    "HEIF": "image/heic",
}


@dataclass(frozen=True)
class ServeSettings:
    """How the server runs; the defaults are the safe ones."""

    model: str = "segnafnet-gopro"  # loaded at start-up, in the background
    device: str = "auto"
    precision: str = "auto"
    tile: int | str | None = "auto"
    offline: bool = False
    max_upload_bytes: int = 64 * 2**20  # one upload, multipart framing included
    max_pixels: int | None = None  # None: imageio's decompression-bomb guard
    queue_size: int = 8  # jobs waiting for the device; one more is refused
    keep_results: int = 32  # finished jobs whose results the page may still fetch
    abandon_after: float = 60.0  # seconds without a poll before a waiting page job is dropped
    temp_parent: Path | None = None  # where the private temp folder goes (None: system temp)
    # Host header names answered (any port); None: any. The loopback default stops a web page
    # that rebinds its own name to 127.0.0.1 (DNS rebinding) from using the server.
    hosts: tuple[str, ...] | None = ("localhost", "127.0.0.1", "::1")
    # SAM of the next waiting job beside the network (same results); None: on CUDA only
    masks_beside_network: bool | None = None


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server to this computer (``localhost`` or a
    loopback address); any other host is reached by names and addresses we cannot list."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Output:
    """One file a job produced: its bytes, media type and download name."""

    data: bytes
    media_type: str
    filename: str


class QueueFull(SamDeblurError):
    """Every waiting place is taken; the client should retry later."""


class ModelUnavailable(SamDeblurError):
    """The requested model failed to load (its weights are missing, ...): HTTP 503 at once."""


class JobCancelled(Exception):
    """Raised inside a job when it was cancelled (caught by the worker)."""


@dataclass
class JobRequest:
    """What a client asked for. ``name`` is the client's file name, for download names only."""

    kind: JobKind
    model: str
    name: str = "photo"
    tlc: bool | None = None
    format: str | None = None  # deblur: output format (None: the input's); masks: segmask|overlay
    quality: int = 95
    previews: bool = False  # also make PNG previews (before, after, overlay) for the page


@dataclass
class ServeJob:
    """One photo through the queue; its public view is :meth:`status`."""

    request: JobRequest
    folder: Path
    picture: Picture
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    state: JobState = "queued"
    stage: str = "queued"
    error: str | None = None
    http_status: int = 200
    outputs: dict[str, Output] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    done: threading.Event = field(default_factory=threading.Event)
    last_seen: float = field(default_factory=time.monotonic)
    cancelled: bool = False
    ahead: Future[MaskResult] | None = None  # its masks, made by the masks thread

    def cancel(self) -> None:
        """Ask the job to stop (a waiting job never starts; a running one stops at a stage)."""
        self.cancelled = True

    def touch(self) -> None:
        """Someone still wants this job (page polls)."""
        self.last_seen = time.monotonic()

    def status(self) -> dict[str, Any]:
        """JSON-able view: id, state, stage, error, outputs and what is known about the photo."""
        return {
            "id": self.id,
            "kind": self.request.kind,
            "model": self.request.model,
            "state": self.state,
            "stage": self.stage,
            "error": self.error,
            "outputs": sorted(self.outputs),
            **self.info,
        }


def safe_stem(name: str | None) -> str:
    """A download-name stem from a client's file name: letters, digits, ``._-`` only.

    The client's name is never used as a path; this only names what the browser saves.
    """
    stem = Path((name or "").replace("\\", "/")).stem
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._")[:80]
    return stem or "photo"


def output_format(picture: Picture, format: str | None) -> str:
    """The output format: ``format`` if given (UsageError if unknown), else the input's."""
    from sam_deblur_cli.imageio import output_format_for

    if format:
        return output_format_for("", format)
    return (
        "JPEG" if picture.source_format == "MPO" else output_format_for("", picture.source_format)
    )


class Service:
    """The loaded models, the queue and the worker thread of one server."""

    def __init__(self, settings: ServeSettings | None = None) -> None:
        self.settings = settings = settings or ServeSettings()
        parent = None if settings.temp_parent is None else str(settings.temp_parent)
        self.temp_root = Path(tempfile.mkdtemp(prefix="sam-deblur-serve-", dir=parent))
        self.device_lock = threading.Lock()  # one job at a time on the device
        self.sam_lock = threading.Lock()  # one SAM run at a time (worker or masks thread)
        self.ready = threading.Event()
        self.load_error: str | None = None
        self.device: str | None = None
        self._deblurrers: dict[str, Deblurrer] = {}
        self._cond = threading.Condition()
        self._waiting: collections.deque[ServeJob] = collections.deque()
        self._jobs: dict[str, ServeJob] = {}
        self._closed = False
        self._beside_by_default = False  # the loaded models' device decides (see _next_ahead)
        self._worker = threading.Thread(target=self._work, name="sam-deblur-worker", daemon=True)
        self._masker = threading.Thread(
            target=self._work_ahead, name="sam-deblur-masks", daemon=True
        )
        self._worker.start()
        self._masker.start()

    # ------------------------------------------------------------------ state for the API

    def health(self) -> dict[str, Any]:
        """``status`` "loading" | "ready" | "degraded" (the default model failed, others
        answer) | "error" (none answers), the default model, the models that answer
        (``models``), device, queue length."""
        answering = [m["name"] for m in self.models() if m["available"]]
        if self.load_error:
            status = "degraded" if answering else "error"
        else:
            status = "ready" if self.ready.is_set() else "loading"
        with self._cond:
            waiting = len(self._waiting)
        return {
            "status": status,
            "model": self.settings.model,
            "models": answering,
            "device": self.device,
            "error": self.load_error,
            "waiting": waiting,
            "queue_size": self.settings.queue_size,
            "max_upload_bytes": self.settings.max_upload_bytes,
        }

    def models(self) -> list[dict[str, Any]]:
        """The deblur models this server may use: installed ones plus its start-up model;
        ``available`` is False for the start-up model when it failed to load."""
        from sam_deblur_cli import weights

        found = []
        for entry in weights.load_manifest():
            if entry.kind != "deblur":
                continue
            installed = weights.locate(entry) is not None
            if installed or entry.name == self.settings.model:
                found.append(
                    {
                        "name": entry.name,
                        "default": entry.name == self.settings.model,
                        "masks": entry.recipe is not None,
                        "tlc": entry.tlc,
                        "loaded": entry.name in self._deblurrers,
                        "available": installed and not self._failed(entry.name),
                    }
                )
        return found

    def _failed(self, name: str) -> bool:
        return name == self.settings.model and self.load_error is not None

    def check_model(self, name: str) -> None:
        """UsageError unless ``name`` is one of :meth:`models` (never downloads on request);
        ModelUnavailable, at once, for the start-up model when it failed to load."""
        if self._failed(name):
            raise ModelUnavailable(f"{name} is not available: {self.load_error}")
        names = [m["name"] for m in self.models()]
        if name not in names:
            raise UsageError(
                f"Unknown or uninstalled model {name!r}; choose one of {', '.join(names)} "
                "(install others with `sam-deblur weights download`)."
            )

    def job(self, job_id: str) -> ServeJob | None:
        """The job with this id, if it is still known."""
        with self._cond:
            return self._jobs.get(job_id)

    # ------------------------------------------------------------------ uploads and jobs

    def new_folder(self) -> Path:
        """A fresh private sub-folder of the temp folder for one upload."""
        return Path(tempfile.mkdtemp(dir=self.temp_root))

    def submit(self, request: JobRequest, folder: Path, picture: Picture) -> ServeJob:
        """Queue a job owning ``folder`` (removed when it ends); QueueFull when no place is free."""
        job = ServeJob(request, folder, picture)
        with self._cond:
            if self._closed:
                raise QueueFull("The server is shutting down; try again later.")
            if len(self._waiting) >= self.settings.queue_size:
                raise QueueFull(
                    f"{len(self._waiting)} photos are already waiting; try again in a moment."
                )
            self._waiting.append(job)
            self._jobs[job.id] = job
            self._forget_old()
            self._cond.notify_all()
        return job

    def cancel(self, job: ServeJob) -> None:
        """Cancel ``job``: a waiting one leaves the queue at once, a running one at a stage."""
        job.cancel()
        with self._cond:
            if job in self._waiting:
                self._waiting.remove(job)
                self._finish(job, "cancelled", "Cancelled.")
                self._cond.notify_all()  # the masks thread may take the next one

    def close(self, timeout: float = 10.0) -> None:
        """Stop the worker (waiting jobs are cancelled) and remove the temp folder."""
        with self._cond:
            self._closed = True
            while self._waiting:
                self._finish(self._waiting.popleft(), "cancelled", "The server stopped.")
            self._cond.notify_all()
        self._worker.join(timeout)
        self._masker.join(timeout)
        shutil.rmtree(self.temp_root, ignore_errors=True)

    def _forget_old(self) -> None:
        finished = [j for j in self._jobs.values() if j.done.is_set()]
        for old in finished[: max(0, len(finished) - self.settings.keep_results)]:
            del self._jobs[old.id]

    def _finish(
        self, job: ServeJob, state: JobState, error: str | None = None, status: int = 200
    ) -> None:
        job.state, job.error, job.http_status = state, error, status
        if state != "done":
            job.outputs.clear()
        job.picture = None  # type: ignore[assignment]  # free the pixels; the outputs stay
        shutil.rmtree(job.folder, ignore_errors=True)
        job.done.set()

    # ------------------------------------------------------------------ the worker thread

    def _work(self) -> None:
        with self.device_lock:
            self._load_default()
        with self._cond:
            self._cond.notify_all()  # the masks thread may start now
        while True:
            with self._cond:
                while not self._waiting and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                job = self._waiting[0]
            with self.device_lock:
                with self._cond:
                    if job not in self._waiting:  # cancelled while the device was busy
                        continue
                    self._waiting.remove(job)
                    self._cond.notify_all()  # the masks thread may take the next one
                    abandoned = time.monotonic() - job.last_seen > self.settings.abandon_after
                    if job.cancelled or abandoned:
                        self._finish(job, "cancelled", "Cancelled: nobody was waiting for it.")
                        continue
                    job.state = "running"
                self._run(job)

    def _work_ahead(self) -> None:
        """The masks thread: the first waiting job's masks while the worker runs another."""
        from sam_deblur_cli.devices import side_stream

        stream: Any = None
        made_stream = False
        while True:
            with self._cond:
                while not self._closed and (ahead := self._next_ahead()) is None:
                    self._cond.wait()
                if self._closed:
                    return
                assert ahead is not None
                job, deblurrer = ahead
                job.ahead, picture = Future(), job.picture
            if not made_stream:  # once, so it waits only for the weights' upload
                stream, made_stream = side_stream(deblurrer.placement.device), True
            try:
                job.ahead.set_result(self._compute_masks(deblurrer, picture, stream))
            except BaseException as exc:  # the worker raises it for this job
                job.ahead.set_exception(exc)

    def _next_ahead(self) -> tuple[ServeJob, Deblurrer] | None:
        """(Lock held.) The first waiting job, when SAM goes beside the network, no masks
        are made ahead yet, and its model is loaded and takes masks."""
        if not self._waiting or not self._deblurrers:
            return None
        beside = self.settings.masks_beside_network
        if beside is None:
            beside = self._beside_by_default
        job = self._waiting[0]
        deblurrer = self._deblurrers.get(job.request.model)
        if not beside or job.ahead is not None or job.cancelled or deblurrer is None:
            return None
        return (job, deblurrer) if deblurrer.needs_masks else None

    def _compute_masks(self, deblurrer: Deblurrer, picture: Picture, stream: Any) -> MaskResult:
        """SAM masks of ``picture``, one run at a time; on ``stream`` when given (CUDA)."""
        from sam_deblur_cli.pipeline import as_uint8_rgb

        with self.sam_lock:
            if stream is None:
                return deblurrer.compute_masks(as_uint8_rgb(picture.rgb))
            import torch

            with torch.cuda.stream(stream):
                return deblurrer.compute_masks(as_uint8_rgb(picture.rgb))

    def _load_default(self) -> None:
        try:
            self._deblurrer(self.settings.model)
            self.ready.set()
        except SamDeblurError as exc:
            self.load_error = str(exc)  # health reports it; `serve` prints it once
        except Exception as exc:  # a server must report, not die, whatever the loader hit
            self.load_error = f"Loading {self.settings.model} failed ({exc}); see the server log."
            logger.exception("could not load %s", self.settings.model)

    def _deblurrer(self, model: str) -> Deblurrer:
        if model not in self._deblurrers:
            from sam_deblur_cli.amg import RecipeOverrides
            from sam_deblur_cli.pipeline import Deblurrer, DeblurSettings

            s = self.settings
            settings = DeblurSettings(
                recipe=RecipeOverrides(model=model),
                device=s.device,
                precision=s.precision,
                tile=s.tile,
                offline=s.offline,
            )
            # models with the same mask recipe share one SAM (it is the larger part)
            loaded = tuple(self._deblurrers.values())
            self._deblurrers[model] = Deblurrer(settings, share_sam_with=loaded)
            self.device = self._deblurrers[model].placement.device
            self._beside_by_default = self._deblurrers[model].masks_beside_network
        return self._deblurrers[model]

    def _run(self, job: ServeJob) -> None:
        try:
            self._stage(job, "loading model")
            deblurrer = self._deblurrer(job.request.model)
            if job.request.kind == "deblur":
                self._deblur(job, deblurrer)
            else:
                self._masks(job, deblurrer)
        except JobCancelled:
            self._finish(job, "cancelled", "Cancelled.")
        except InputError as exc:
            self._finish(job, "failed", public_message(exc, job.folder, job.request.name), 422)
        except SamDeblurError as exc:
            self._finish(
                job,
                "failed",
                public_message(exc, job.folder, job.request.name),
                422 if _usage(exc) else 503,
            )
        except Exception:  # one photo must not stop the server; the log has the traceback
            logger.exception("job %s failed", job.id)
            self._finish(job, "failed", "Internal error while processing this photo.", 500)
        else:
            self._finish(job, "done")

    def _stage(self, job: ServeJob, stage: str) -> None:
        if job.cancelled:
            raise JobCancelled
        job.stage = stage

    def _masks_of(self, job: ServeJob, deblurrer: Deblurrer) -> MaskResult | None:
        if not deblurrer.needs_masks:
            return None
        self._stage(job, "masks")
        if job.ahead is not None:  # made beside the job before (same model: see _next_ahead)
            masks = job.ahead.result()
        else:
            masks = self._compute_masks(deblurrer, job.picture, None)
        job.info.update(masks=masks.count, groups=masks.groups)
        return masks

    def _deblur(self, job: ServeJob, deblurrer: Deblurrer) -> None:
        from sam_deblur_cli.imageio import picture_with, suffix_for_format, write_image
        from sam_deblur_cli.naming import default_output
        from sam_deblur_cli.nets.tlc import set_tlc

        request, picture = job.request, job.picture
        fmt = output_format(picture, request.format)
        masks = self._masks_of(job, deblurrer)
        self._stage(job, "deblur")
        tlc = deblurrer.entry.tlc if request.tlc is None else request.tlc
        set_tlc(deblurrer.net, tlc)  # one job at a time holds the device: no one else sees it
        restored = deblurrer.deblur(picture.rgb, masks)
        self._stage(job, "write")
        name = default_output(Path(safe_stem(request.name) + suffix_for_format(fmt)), fmt).name
        dst = job.folder / f"result{suffix_for_format(fmt)}"
        write_image(dst, picture_with(restored, picture), format=fmt, quality=request.quality)
        job.outputs["result"] = Output(dst.read_bytes(), MEDIA_TYPES[fmt], name)
        job.info.update(tlc=tlc, format=fmt)
        if request.previews:
            self._stage(job, "previews")
            self._previews(job, restored, masks)

    def _previews(self, job: ServeJob, restored: Any, masks: MaskResult | None) -> None:
        """8-bit PNGs of the photo before and after (same orientation) and the mask overlay."""
        from sam_deblur_cli.masks.formats import render_overlay
        from sam_deblur_cli.pipeline import as_uint8_rgb

        stem = safe_stem(job.request.name)
        rgb = as_uint8_rgb(job.picture.rgb)
        shown = {"before": rgb, "after": as_uint8_rgb(restored)}
        if masks is not None:
            shown["overlay"] = render_overlay(
                rgb, masks.labels, plain_label=masks.plain_label, alpha=0.5
            )
        for key, pixels in shown.items():
            job.outputs[key] = Output(_png_bytes(pixels), "image/png", f"{stem}_{key}.png")

    def _masks(self, job: ServeJob, deblurrer: Deblurrer) -> None:
        from sam_deblur_cli.masks.save import write_format
        from sam_deblur_cli.pipeline import as_uint8_rgb

        kind = job.request.format or "segmask"
        if not deblurrer.needs_masks:
            raise UsageError(f"{job.request.model} takes no masks; pick a SAM-Deblur model.")
        masks = self._masks_of(job, deblurrer)
        assert masks is not None
        self._stage(job, "write")
        stem = safe_stem(job.request.name)
        path = write_format(kind, job.folder / "masks", as_uint8_rgb(job.picture.rgb), masks)
        job.outputs["result"] = Output(path.read_bytes(), "image/png", f"{stem}_{kind}.png")


def _png_bytes(pixels: Any) -> bytes:
    """A quick PNG of H x W x 3 uint8 RGB, in memory (previews never touch the disk)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def check_mask_format(format: str | None) -> str:
    """``segmask`` (default) or ``overlay``; UsageError otherwise."""
    kind = (format or "segmask").strip().lower()
    if kind not in MASK_FORMATS:
        raise UsageError(f"Unknown mask format {format!r}; choose segmask or overlay.")
    return kind


def public_message(exc: BaseException, folder: Path, name: str) -> str:
    """The error's sentence with server paths (under ``folder``) replaced by the client's
    file name ``name``, cleaned as :func:`safe_stem` cleans it."""
    shown = safe_stem(name) + re.sub(r"[^A-Za-z0-9.]", "", Path(name).suffix)[:8]
    return re.sub(re.escape(str(folder)) + r"[^\s:]*", lambda _: shown, str(exc))


def _usage(exc: SamDeblurError) -> bool:
    return isinstance(exc, UsageError)
