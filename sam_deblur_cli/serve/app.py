"""The ASGI app: the page, the HTTP API and their safety rules, over a :class:`jobs.Service`.

Endpoints (all errors are JSON ``{"detail": "one sentence"}``, never a traceback):

- ``GET /`` the page (``static/``); ``GET /docs`` OpenAPI;
- ``GET /api/health`` loading / ready / degraded (the default model failed, others answer) /
  error, the models that answer, device, queue; ``GET /api/models``;
- ``POST /api/deblur`` multipart ``file`` + form ``model``, ``tlc``, ``format``, ``quality``:
  waits and returns the image (the original format unless ``format``), cancelled if the client
  goes away;
- ``POST /api/masks`` multipart ``file`` + ``model``, ``format`` (segmask | overlay): a PNG;
- ``POST /api/jobs`` the same fields + ``kind`` (deblur | masks): 202 with a job id at once,
  then ``GET /api/jobs/{id}`` (stage, state), ``GET /api/jobs/{id}/{output}`` (result, before,
  after, overlay), ``DELETE /api/jobs/{id}`` (cancel). The page uses these.

Statuses: 400 a malformed request, 403 a cross-site POST, 404 an unknown job or output, 413 an
upload or image too large, 415 not an image, 422 a bad option (unknown model or format),
503 queue full (Retry-After) or the model failed to load (answered at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import shutil
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import uvicorn
from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from sam_deblur_cli.errors import (
    ImageReadError,
    PixelLimitError,
    SamDeblurError,
    SetupError,
    UsageError,
)
from sam_deblur_cli.serve.jobs import (
    JobKind,
    JobRequest,
    ModelUnavailable,
    QueueFull,
    ServeJob,
    ServeSettings,
    Service,
    check_mask_format,
    output_format,
    public_message,
)

logger = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
RETRY_AFTER_S = 5
CHUNK = 1 << 20
PAGE_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'"
)

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Message, Receive, Send], Awaitable[None]]


class _TooLarge(Exception):
    pass


class Guard:
    """ASGI middleware: refuses requests for a Host name outside ``hosts`` (400; None: any),
    bodies above ``limit`` bytes (413) while they arrive, before anything is parsed or
    spooled, and cross-site POST/DELETE requests (403: a web page the user visits must not
    make this server work)."""

    def __init__(self, app: ASGIApp, limit: int, hosts: tuple[str, ...] | None = None) -> None:
        self.app, self.limit, self.hosts = app, limit, hosts

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        if self.hosts is not None and _host_name(headers) not in self.hosts:
            text = (
                f"This server answers only for {', '.join(self.hosts)}; open it as "
                f"http://{self.hosts[0]}:PORT/ (or start it with --host to serve other names)."
            )
            await _send_error(send, 400, text)
            return
        if scope["method"] not in ("GET", "HEAD", "OPTIONS") and _cross_site(headers):
            await _send_error(send, 403, "Requests from other web sites are refused.")
            return
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.limit:
            await _send_error(send, 413, _too_large_text(self.limit))
            return
        seen, started = 0, False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except _TooLarge:
            if not started:
                await _send_error(send, 413, _too_large_text(self.limit))


def _host_name(headers: dict[str, str]) -> str:
    """The Host header's name, without port or IPv6 brackets ("" when missing or malformed)."""
    try:
        return (urlsplit("//" + headers.get("host", "")).hostname or "").lower()
    except ValueError:
        return ""


def _cross_site(headers: dict[str, str]) -> bool:
    origin = headers.get("origin")
    if not origin or origin == "null":
        return origin == "null"
    return urlsplit(origin).netloc != headers.get("host")


def _too_large_text(limit: int) -> str:
    return (
        f"The upload is larger than the server's {limit / 2**20:g} MB limit; "
        "send a smaller file or start the server with a larger --max-upload-mb."
    )


async def _send_error(send: Send, status: int, detail: str) -> None:
    response = JSONResponse({"detail": detail}, status_code=status)
    await response({"type": "http"}, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.disconnect"}


def create_app(settings: ServeSettings | None = None, service: Service | None = None) -> FastAPI:
    """The app for ``settings``; starts the service (its worker loads the model in the
    background) unless one is given. The service stops when the app's lifespan ends."""
    settings = settings or ServeSettings()
    svc = service or Service(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await run_in_threadpool(svc.close)

    app = FastAPI(
        title="sam-deblur",
        summary="Deblur photos with SAM-Deblur: upload a photo, get it back sharper.",
        lifespan=lifespan,
    )
    app.state.service = svc
    _errors(app)
    _routes(app, svc)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(Guard, limit=settings.max_upload_bytes, hosts=settings.hosts)
    return app


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host``:``port`` (0: a free port the system picks; the socket's
    ``getsockname()`` has it), for :func:`run_server`. A port in use, a privileged port or a
    host that is not this computer's is a SetupError naming the way out."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise SetupError(
            f"--host {host}: not a name or address this computer has ({exc})."
        ) from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        sock.bind(address)
    except OSError as exc:
        sock.close()
        where = f"port {port} on {host}"
        if exc.errno == errno.EADDRINUSE:
            raise SetupError(
                f"{where} is already in use (another server, or sam-deblur serve already "
                f"running?); pick another with --port, e.g. --port {port + 1}."
            ) from None
        if exc.errno == errno.EACCES:
            raise SetupError(
                f"{where} needs administrator rights; use a port above 1023."
            ) from None
        raise SetupError(f"Cannot listen on {where}: {exc.strerror or exc}.") from None
    sock.set_inheritable(True)
    return sock


def run_server(service: Service, sock: socket.socket, *, verbose: bool = False) -> None:
    """Serve :func:`create_app` for ``service`` on the bound ``sock`` (:func:`listen`) until
    interrupted (uvicorn; its own log at INFO with ``verbose``, else warnings only)."""
    app = create_app(service.settings, service)
    config = uvicorn.Config(app, log_level="info" if verbose else "warning")
    uvicorn.Server(config).run(sockets=[sock])


def _errors(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ())[1:]) or "request"
        text = f"{where}: {first.get('msg', 'invalid value')}"
        return JSONResponse({"detail": text}, status_code=422 if where != "file" else 400)

    @app.exception_handler(QueueFull)
    async def full(request: Request, exc: QueueFull) -> JSONResponse:
        headers = {"Retry-After": str(RETRY_AFTER_S)}
        return JSONResponse({"detail": str(exc)}, status_code=503, headers=headers)

    @app.exception_handler(SamDeblurError)
    async def library(request: Request, exc: SamDeblurError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("request %s failed", request.url.path)
        return JSONResponse({"detail": "Internal server error; see the server log."}, 500)


def _routes(app: FastAPI, svc: Service) -> None:
    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": PAGE_POLICY})

    @app.get("/api/health", summary="Whether the model is loaded (loading, ready, error)")
    async def health() -> dict[str, Any]:
        return svc.health()

    @app.get("/api/models", summary="Deblur models this server can use")
    async def models() -> list[dict[str, Any]]:
        return await run_in_threadpool(svc.models)

    @app.post("/api/deblur", summary="Deblur one photo; returns the image")
    async def deblur(request: Request, form: Annotated[Upload, Depends(upload_form)]) -> Response:
        job = await _submit(svc, form, "deblur", previews=False)
        return await _wait_and_answer(svc, request, job)

    @app.post("/api/masks", summary="SAM masks of one photo: segmask or overlay PNG")
    async def masks(request: Request, form: Annotated[Upload, Depends(upload_form)]) -> Response:
        job = await _submit(svc, form, "masks", previews=False)
        return await _wait_and_answer(svc, request, job)

    @app.post("/api/jobs", status_code=202, summary="Queue a photo; poll /api/jobs/{id}")
    async def submit(form: Annotated[Upload, Depends(job_form)]) -> dict[str, Any]:
        kind: JobKind = "masks" if form.kind == "masks" else "deblur"
        job = await _submit(svc, form, kind, previews=kind == "deblur")
        return job.status()

    @app.get("/api/jobs/{job_id}", summary="A job's state and stage")
    async def status(job_id: str) -> dict[str, Any]:
        job = _job(svc, job_id)
        job.touch()
        return job.status()

    @app.get("/api/jobs/{job_id}/{output}", summary="A finished job's file")
    async def output(job_id: str, output: str) -> Response:
        job = _job(svc, job_id)
        job.touch()
        if output not in job.outputs:
            raise HTTPException(
                404,
                f"Job {job_id} has no {output!r} (it has: "
                f"{', '.join(sorted(job.outputs)) or 'nothing yet'}).",
            )
        return _file(job, output)

    @app.delete("/api/jobs/{job_id}", summary="Cancel a job")
    async def cancel(job_id: str) -> dict[str, Any]:
        job = _job(svc, job_id)
        svc.cancel(job)
        return job.status()


@dataclass
class Upload:
    """The fields of an upload: ``file`` is the photo, the rest are options."""

    file: UploadFile
    model: str | None = None
    tlc: bool | None = None
    format: str | None = None
    quality: int = 95
    kind: str = "deblur"


async def upload_form(
    file: Annotated[UploadFile, File(description="The photo: JPEG, PNG, TIFF, WebP or BMP.")],
    model: Annotated[str | None, Form(description="Deblur model (default: the server's).")] = None,
    tlc: Annotated[bool | None, Form(description="Test-time local converter.")] = None,
    format: Annotated[
        str | None,
        Form(
            description="deblur: jpg, png, tif, webp or bmp (default: the input's); "
            "masks: segmask (default) or overlay."
        ),
    ] = None,
    quality: Annotated[int, Form(description="JPEG / WebP quality, 1-100.")] = 95,
) -> Upload:
    """The upload's form fields (a dependency: FastAPI documents them in /docs)."""
    return Upload(file, model, tlc, format, quality)


async def job_form(
    form: Annotated[Upload, Depends(upload_form)],
    kind: Annotated[str, Form(description="deblur (default) or masks.")] = "deblur",
) -> Upload:
    """An upload for the job queue, with its ``kind``."""
    if kind not in ("deblur", "masks"):
        raise HTTPException(422, f"Unknown job kind {kind!r}; use deblur or masks.")
    form.kind = kind
    return form


def _job(svc: Service, job_id: str) -> ServeJob:
    job = svc.job(job_id)
    if job is None:
        raise HTTPException(404, f"No job {job_id}; it finished long ago or never existed.")
    return job


async def _submit(svc: Service, form: Upload, kind: JobKind, *, previews: bool) -> ServeJob:
    """Save the upload privately, decode it, check the options, queue it (the job owns the
    folder from then on; before that, any refusal removes it)."""
    if not 1 <= form.quality <= 100:
        raise HTTPException(422, "quality must be between 1 and 100.")
    request = JobRequest(
        kind=kind,
        model=form.model or svc.settings.model,
        name=form.file.filename or "photo",
        tlc=form.tlc,
        format=form.format or None,
        quality=form.quality,
        previews=previews,
    )
    folder = svc.new_folder()
    try:
        src = folder / "upload"
        await _save(form.file, src, svc.settings.max_upload_bytes)
        picture = await run_in_threadpool(_decode_and_check, svc, src, request)
        return svc.submit(request, folder, picture)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


async def _save(upload: UploadFile, dst: Path, limit: int) -> None:
    """Copy the upload into ``dst`` (our own name, never the client's), at most ``limit`` bytes."""
    size = 0
    with dst.open("xb") as handle:
        while chunk := await upload.read(CHUNK):
            size += len(chunk)
            if size > limit:
                raise HTTPException(413, _too_large_text(limit))
            handle.write(chunk)
    if size == 0:
        raise HTTPException(400, "The uploaded file is empty; pick a photo.")


def _decode_and_check(svc: Service, src: Path, request: JobRequest) -> Any:
    """The decoded picture, or the HTTP error that says what is wrong with the request."""
    from sam_deblur_cli.imageio import read_image

    try:
        svc.check_model(request.model)
        if request.kind == "masks":
            request.format = check_mask_format(request.format)
        limit = svc.settings.max_pixels
        picture = read_image(src, **({} if limit is None else {"max_pixels": limit}))
        if request.kind == "deblur":
            output_format(picture, request.format)
    except PixelLimitError as exc:
        raise HTTPException(413, public_message(exc, src.parent, request.name)) from None
    except ImageReadError as exc:
        raise HTTPException(415, public_message(exc, src.parent, request.name)) from None
    except ModelUnavailable as exc:
        raise HTTPException(503, str(exc)) from None
    except UsageError as exc:
        raise HTTPException(422, str(exc)) from None
    return picture


async def _wait_and_answer(svc: Service, request: Request, job: ServeJob) -> Response:
    """Wait for ``job``; cancel it if the client goes away; the result or its error as JSON."""
    while not job.done.is_set():
        if await request.is_disconnected():
            svc.cancel(job)
            logger.info("client left; job %s cancelled", job.id)
            return Response(status_code=499)
        await asyncio.sleep(0.05)
    if job.state != "done":
        return JSONResponse({"detail": job.error}, status_code=job.http_status or 500)
    return _file(job, "result")


def _file(job: ServeJob, key: str) -> Response:
    item = job.outputs[key]
    headers = {"Content-Disposition": f'attachment; filename="{item.filename}"', "X-Job-Id": job.id}
    return Response(item.data, media_type=item.media_type, headers=headers)
