"""The Typer app object, shared consoles and the default-command group.

Importing this module must stay cheap: no torch, no numpy, no segment_anything.
"""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console
from typer.core import TyperGroup

DEFAULT_COMMAND = "deblur"


class DefaultCommandGroup(TyperGroup):
    """Route ``sam-deblur photo.jpg`` to the ``deblur`` command.

    Any first argument that is not a sub-command name (and not an option of the group
    itself) is taken as an input path of the default command.
    """

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in _group_options(self, ctx):
            args = [DEFAULT_COMMAND, *args]
        return super().parse_args(ctx, args)


def _group_options(group: Any, ctx: Any) -> set[str]:
    names: set[str] = set()
    for param in group.get_params(ctx):
        names.update(getattr(param, "opts", []))
        names.update(getattr(param, "secondary_opts", []))
    return names


app = typer.Typer(
    name="sam-deblur",
    cls=DefaultCommandGroup,
    help="Deblur photos with SAM-Deblur: Segment Anything masks guide a NAFNet network.\n\n"
    "Run `sam-deblur PHOTO` to deblur a photo; models download on first use.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Rich consoles: stdout for results (tables, JSON), stderr for messages and progress.
console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int) -> typer.Exit:
    """Print one red line on stderr and return the Exit to raise."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def echo_json(record: dict[str, Any]) -> None:
    """One JSON record on one stdout line (for ``--json``)."""
    import json

    typer.echo(json.dumps(record, ensure_ascii=False, default=str))
