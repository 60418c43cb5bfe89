"""Command-line entry point: ``sam-deblur``.

The only place that prints and exits. Sub-command modules register themselves on
``app`` when imported; each keeps torch and friends inside its functions.
"""

from __future__ import annotations

import typer

from sam_deblur_cli._version import __version__
from sam_deblur_cli.cli.app import app, fail
from sam_deblur_cli.errors import EXIT_INTERRUPTED, SamDeblurError


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sam-deblur {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """Deblur photos with SAM-Deblur."""


def _register() -> None:
    # Imported for their side effect: each module adds its commands to ``app``.
    from sam_deblur_cli.cli import commands  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code; library errors become one red line on stderr.

    Typer/Click handle their own usage errors (exit 2) in standalone mode; our exception
    family passes through them and is turned into its documented exit code here.
    """
    _register()
    try:
        app(args=argv, prog_name="sam-deblur", standalone_mode=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except SamDeblurError as exc:
        return fail(str(exc), exc.exit_code).exit_code
    except KeyboardInterrupt:
        return fail("interrupted", EXIT_INTERRUPTED).exit_code
    return 0
