"""`sam-deblur serve`: the local web page and HTTP API (``sam_deblur_cli.serve``).

Thin: options (``options.ServeOptions``) -> ``ServeSettings``; ``serve.app.run_server``
answers at once while its worker loads the model in the background, and a watcher thread
says when the model is ready (or why it is not).
FastAPI and uvicorn come with the ``serve`` extra and are imported inside the command, so
``serve --help`` loads neither them nor torch.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from sam_deblur_cli.cli.app import app
from sam_deblur_cli.cli.options import ServeOptions, takes_groups
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


@app.command("serve", help=SERVE_HELP)
@takes_groups
def serve_command(*, options: ServeOptions) -> None:
    """Serve the web page and the HTTP API."""
    try:
        from sam_deblur_cli.serve.app import listen, run_server
        from sam_deblur_cli.serve.jobs import Service
    except ImportError as exc:
        raise fail(
            f"serve needs the optional packages FastAPI and uvicorn ({exc.name} is missing); "
            "run `pip install 'sam-deblur-cli[serve]'`.",
            EXIT_SETUP,
        ) from None
    settings, host, quiet = options.settings(), options.host, options.quiet
    with library_logging(verbose=options.verbose, quiet=quiet):
        if settings.hosts is None:
            say(
                f"serving on {host}: anyone who can reach this computer "
                "can upload photos and use its processor; there is no login. Use the default "
                "--host 127.0.0.1 to keep it to this computer.",
                label="warning:",
                style="bold red",
            )
        sock = listen(host, options.port)  # before any model: a busy port fails at once
        service = Service(settings)
        shown = f"[{host}]" if ":" in host else host
        if not quiet:
            say(
                f"sam-deblur serve: http://{shown}:{sock.getsockname()[1]}/ (API docs at "
                f"/docs); loading {settings.model} in the background..."
            )
        threading.Thread(target=_say_when_ready, args=(service, quiet), daemon=True).start()
        run_server(service, sock, verbose=options.verbose)


def _say_when_ready(service: Service, quiet: bool) -> None:
    while not service.ready.wait(0.2):
        if service.load_error:
            say(str(service.load_error), label="error:", style="bold red")
            return
    if not quiet:
        say(f"model {service.settings.model} ready on {service.device}.")
