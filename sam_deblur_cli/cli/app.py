"""The Typer app object and the default-command group.

The consoles, ``fail`` and ``echo_json`` live in ``cli/output.py`` and are re-exported
here. Importing this module must stay cheap: no torch, no numpy, no segment_anything.
"""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperGroup

from sam_deblur_cli.cli.output import console, echo_json, err_console, fail

__all__ = ["DEFAULT_COMMAND", "app", "console", "echo_json", "err_console", "fail"]

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
