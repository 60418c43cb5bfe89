"""What the commands show, and where: results on stdout, messages and progress on stderr.

The consoles, the one-line error, JSON lines (``--json``), notes, progress bars, the
end-of-run failure table and the routing of the library's log records. Importing it stays
cheap (Rich and Typer only); the Rich parts that draw are imported when they are used.

One rule for text: markup is ours alone. Text from users, files, the network or exceptions
(paths, model names, URLs, error messages) reaches the terminal through :func:`say`,
:func:`fail`, :func:`note` or :func:`cell`, which escape it once, so ``photo [1].jpg`` and
``pip install 'sam-deblur-cli[serve]'`` print as written.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape as escape  # re-exported for tables

if TYPE_CHECKING:
    from rich.progress import Progress, ProgressColumn
    from rich.text import Text

    from sam_deblur_cli.weights import ProgressCallback

# Rich consoles: stdout for results (tables, JSON), stderr for messages and progress.
console = Console()
err_console = Console(stderr=True)


def say(text: str, *, label: str = "", style: str = "", stdout: bool = False) -> None:
    """One line: ``label`` (ours, in ``style``) then ``text``, escaped so it is never markup.

    Messages go to stderr; ``stdout`` for results.
    """
    from rich.text import Text

    line = Text.assemble((f"{label} ", style) if label else "", text)
    (console if stdout else err_console).print(line, highlight=False, soft_wrap=True)


def cell(text: object) -> Text:
    """A table cell holding ``text`` as written (Rich tables parse plain strings as markup)."""
    from rich.text import Text

    return Text(str(text))


def fail(message: str, code: int) -> typer.Exit:
    """Print one red line on stderr and return the Exit to raise."""
    say(message, label="error:", style="bold red")
    return typer.Exit(code)


def nothing_to_do(message: str, *, json: bool) -> typer.Exit:
    """Say that a run found no input (a yellow line; with ``json`` also the record
    ``{"status": "nothing-to-do", "error": null, "message": ...}`` on stdout) and return the
    Exit to raise (``EXIT_NOTHING``)."""
    from sam_deblur_cli.errors import EXIT_NOTHING

    if json:
        echo_json({"status": "nothing-to-do", "error": None, "message": message})
    say(message, label="nothing to do:", style="yellow")
    return typer.Exit(EXIT_NOTHING)


def echo_json(record: Mapping[str, Any]) -> None:
    """One JSON record on one stdout line (for ``--json``)."""
    import json

    typer.echo(json.dumps(record, ensure_ascii=False, default=str))


def note(text: str) -> None:
    """A yellow ``note:`` line on stderr (departures from a recipe and the like)."""
    say(text, label="note:", style="yellow")


def progress_bar(*extra: ProgressColumn, enabled: bool = True) -> Progress:
    """A transient bar on stderr: description, bar, done/total, time left, then ``extra``."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        *extra,
    )
    # Off the terminal (logs, pipes) a bar would leave only a blank line behind.
    shown = enabled and err_console.is_terminal
    return Progress(*columns, console=err_console, disable=not shown, transient=True)


@contextmanager
def download_progress() -> Iterator[ProgressCallback]:
    """A Rich progress display on stderr, fed by the library's ``(label, done, total)`` calls.

    Other commands pass the yielded callback as ``progress=`` wherever weights may download.
    """
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TaskID,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    # Off the terminal (logs, pipes, tests) a bar would leave only a blank line behind.
    bars_shown = err_console.is_terminal
    with Progress(*columns, console=err_console, transient=True, disable=not bars_shown) as bars:
        tasks: dict[str, TaskID] = {}

        def update(label: str, done: int, total: int | None) -> None:
            if label not in tasks:
                tasks[label] = bars.add_task(label, total=total)
            bars.update(tasks[label], completed=done, total=total)

        yield update


class StageProgress:
    """A progress bar over records: count, time left and the mean seconds of each stage.

    ``advance(record)`` takes a record with ``status`` and, when "ok", ``seconds`` (stage ->
    seconds); ``stages`` orders the means shown.
    """

    def __init__(self, total: int, stages: Sequence[str], *, label: str, enabled: bool) -> None:
        from rich.progress import TextColumn

        self.stages = stages
        self.progress = progress_bar(TextColumn("{task.fields[stages]}"), enabled=enabled)
        self.task = self.progress.add_task(label, total=total, stages="")
        self.totals: dict[str, float] = {}
        self.done = 0

    def __enter__(self) -> StageProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def describe(self, text: str) -> None:
        """Show ``text`` (the item being worked on) in front of the bar."""
        self.progress.update(self.task, description=text)

    def advance(self, record: Mapping[str, Any]) -> None:
        if record["status"] == "ok":
            self.done += 1
            for stage, seconds in record["seconds"].items():
                self.totals[stage] = self.totals.get(stage, 0.0) + seconds
        means = " ".join(
            f"{stage} {self.totals[stage] / self.done:.1f}s"
            for stage in self.stages
            if stage in self.totals
        )
        self.progress.update(self.task, advance=1, stages=means)


def reason(record: Mapping[str, Any]) -> str:
    """A failed record's error without the leading input path that many errors repeat."""
    error, prefix = str(record["error"]), f"{record['input']}: "
    return error.removeprefix(prefix)


def failure_table(failed: Sequence[Mapping[str, Any]], total: int) -> None:
    """The end-of-run summary on stderr: every failed input (relative to their common
    folder) and its error; records carry ``input`` and ``error``."""
    import os

    from rich.table import Table

    inputs = [str(record["input"]) for record in failed]
    root = os.path.dirname(inputs[0]) if len(inputs) == 1 else os.path.commonpath(inputs)
    table = Table(title=f"{len(failed)} of {total} input(s) failed", title_justify="left")
    table.add_column(escape(f"input (in {root})") if root else "input", overflow="fold")
    table.add_column("error", overflow="fold")
    for path, record in zip(inputs, failed, strict=True):
        table.add_row(cell(os.path.relpath(path, root) if root else path), cell(reason(record)))
    err_console.print(table)


@contextmanager
def library_logging(*, verbose: bool, quiet: bool) -> Iterator[None]:
    """Route the library's log records to stderr through Rich while a command runs.

    WARNING by default, INFO with -v, ERROR with -q. The handler and level are removed
    afterwards, so running commands in-process (tests, notebooks) leaves logging as it was.
    """
    from rich.logging import RichHandler

    logger = logging.getLogger("sam_deblur_cli")
    handler = RichHandler(console=err_console, show_time=False, show_path=False, markup=False)
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.ERROR if quiet else logging.INFO if verbose else logging.WARNING)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
