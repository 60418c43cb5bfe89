"""`sam-deblur serve`: the local web page and HTTP API (``sam_deblur_cli.serve``).

Thin: options -> ``ServeSettings``; the app answers at once while its worker loads the model
in the background, and a watcher thread says when the model is ready (or why it is not).
FastAPI and uvicorn come with the ``serve`` extra and are imported inside the command, so
``serve --help`` loads neither them nor torch.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import threading
from typing import TYPE_CHECKING, Annotated

import typer

from sam_deblur_cli.cli.app import app
from sam_deblur_cli.cli.options import (
    DEFAULT_MODEL,
    Device,
    MaxPixels,
    Model,
    Offline,
    Precision,
    Quiet,
    Tile,
    Verbose,
)
from sam_deblur_cli.cli.output import fail, library_logging, say
from sam_deblur_cli.errors import EXIT_SETUP

if TYPE_CHECKING:
    from sam_deblur_cli.serve.jobs import Service

SERVE_HELP = (
    "Serve a web page (drop photos, compare before and after) and an HTTP API.\n\n"
    "Binds to 127.0.0.1 (this computer only) unless --host says otherwise. The page is at "
    "http://HOST:PORT/, the API documentation at /docs. The model loads in the background; "
    "/api/health says when it is ready."
)
SERVE_PANEL = "Server"


@app.command("serve", help=SERVE_HELP)
def serve_command(
    *,
    host: Annotated[
        str,
        typer.Option(
            "--host", help="Address to bind (0.0.0.0: every network).", rich_help_panel=SERVE_PANEL
        ),
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="TCP port.", rich_help_panel=SERVE_PANEL)
    ] = 7860,
    max_upload_mb: Annotated[
        float,
        typer.Option(
            "--max-upload-mb",
            min=0.001,
            help="Largest upload accepted.",
            rich_help_panel=SERVE_PANEL,
        ),
    ] = 64,
    queue: Annotated[
        int,
        typer.Option(
            "--queue",
            min=1,
            help="Photos that may wait for the device; more get 503.",
            rich_help_panel=SERVE_PANEL,
        ),
    ] = 8,
    model: Model = DEFAULT_MODEL,
    device: Device = "auto",
    precision: Precision = "auto",
    tile: Tile = "auto",
    offline: Offline = False,
    max_pixels: MaxPixels = None,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Serve the web page and the HTTP API."""
    try:
        import uvicorn

        from sam_deblur_cli.serve.app import create_app
        from sam_deblur_cli.serve.jobs import ServeSettings, Service
    except ImportError as exc:
        raise fail(
            f"serve needs the optional packages FastAPI and uvicorn ({exc.name} is missing); "
            "run `pip install 'sam-deblur-cli[serve]'`.",
            EXIT_SETUP,
        ) from None
    settings = ServeSettings(
        model=model,
        device=device,
        precision=precision,
        tile=tile,
        offline=offline,
        max_upload_bytes=int(max_upload_mb * 2**20),
        max_pixels=max_pixels,
        queue_size=queue,
    )
    if not _loopback(host):  # reached by names and addresses we cannot list
        settings = dataclasses.replace(settings, hosts=None)
    with library_logging(verbose=verbose, quiet=quiet):
        if not _loopback(host):
            say(
                f"serving on {host}: anyone who can reach this computer "
                "can upload photos and use its processor; there is no login. Use the default "
                "--host 127.0.0.1 to keep it to this computer.",
                label="warning:",
                style="bold red",
            )
        service = Service(settings)
        shown = f"[{host}]" if ":" in host else host
        if not quiet:
            say(
                f"sam-deblur serve: http://{shown}:{port}/ (API docs at /docs); "
                f"loading {model} in the background..."
            )
        threading.Thread(target=_say_when_ready, args=(service, quiet), daemon=True).start()
        level = "info" if verbose else "warning"
        uvicorn.run(create_app(settings, service), host=host, port=port, log_level=level)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _say_when_ready(service: Service, quiet: bool) -> None:
    while not service.ready.wait(0.2):
        if service.load_error:
            say(str(service.load_error), label="error:", style="bold red")
            return
    if not quiet:
        say(f"model {service.settings.model} ready on {service.device}.")
