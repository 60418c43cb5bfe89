"""`sam-deblur weights list|download|verify|path|import|remove`: thin wrappers over weights.py.

Results go to stdout (tables, paths, JSON lines); progress bars and errors go to stderr.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from sam_deblur_cli import weights as lib
from sam_deblur_cli.cli.app import app, console, echo_json, fail
from sam_deblur_cli.cli.options import Json, Offline
from sam_deblur_cli.cli.output import cell, download_progress, say
from sam_deblur_cli.errors import EXIT_OK, SamDeblurError

weights_app = typer.Typer(
    name="weights",
    help="List, download, verify, import and remove model weights (see weights.toml).",
    no_args_is_help=True,
)
app.add_typer(weights_app, name="weights")


def _human_size(size: int | None) -> str:
    from sam_deblur_cli.files import human_size

    return "?" if size is None else human_size(size)


def _source_text(entry: lib.Entry) -> str:
    if isinstance(entry.source, lib.HubSource):
        return f"hub {entry.source.repo}"
    if isinstance(entry.source, lib.LocalSource):
        return f"local {entry.source.file}"
    # The page address without scheme and anchor keeps the table narrow; --json has it all.
    page = entry.source.page.split("://", 1)[-1].split("#", 1)[0]
    return f"page {page} (import)"


def _record(entry: lib.Entry) -> dict[str, Any]:
    """What `weights list --json` says about one entry (no network, no hashing)."""
    path = lib.locate(entry)
    source = vars(entry.source).copy()
    local = isinstance(entry.source, lib.LocalSource)
    source["type"] = "hub" if entry.on_hub else "local" if local else "page"
    return {
        "name": entry.name,
        "kind": entry.kind,
        "size": entry.size or (path.stat().st_size if path is not None else None),
        "sha256": lib.expected_sha256(entry) or None,
        "source": source,
        "cached": path is not None,
        "path": str(path) if path is not None else None,
        "verified": path is not None and lib.is_verified(entry, path),
        "license": entry.license,
        "homepage": entry.homepage,
        "description": entry.description,
        "tlc": entry.tlc if entry.kind == "deblur" else None,
        "recipe": entry.recipe.name if entry.recipe is not None else None,
    }


@weights_app.command("list")
def list_weights(json_output: Json = False) -> None:
    """Show every model the manifest knows, and whether it is cached and verified."""
    from rich.table import Table

    entries = list(lib.load_manifest())
    records = [_record(entry) for entry in entries]
    if json_output:
        for record in records:
            echo_json(record)
        return
    table = Table()
    # Names are what users type: never cut; the source column wraps instead.
    longest = max((len(entry.name) for entry in entries), default=4)
    table.add_column("name", no_wrap=True, min_width=longest)
    table.add_column("kind", no_wrap=True)
    table.add_column("size", no_wrap=True)
    table.add_column("source", overflow="fold")
    table.add_column("cached", no_wrap=True)
    table.add_column("verified", no_wrap=True)
    for entry, r in zip(entries, records, strict=True):
        verified = ("yes" if r["verified"] else "no") if r["cached"] else "-"
        cached = "yes" if r["cached"] else "no"
        cells = (entry.name, entry.kind, _human_size(r["size"]), _source_text(entry))
        table.add_row(*(cell(text) for text in cells), cached, verified)
    console.print(table)


def _each(names: list[str], action: Any) -> None:
    """Run ``action(entry)`` per name; each failure is one red line, the worst sets the exit."""
    manifest = lib.load_manifest()
    code = EXIT_OK
    for name in names:
        try:
            action(manifest.get(name))
        except SamDeblurError as exc:
            code = max(code, fail(str(exc), exc.exit_code).exit_code)
    if code != EXIT_OK:
        raise typer.Exit(code)


@weights_app.command("download")
def download(
    names: list[str] = typer.Argument(..., help="Model names (see `sam-deblur weights list`)."),
    offline: Offline = False,
) -> None:
    """Download models from the Hub (pinned revision, sha256 checked); prints NAME and PATH."""

    def one(entry: lib.Entry) -> None:
        with download_progress() as progress:
            path = lib.ensure_weights(entry, offline=offline, progress=progress)
        typer.echo(f"{entry.name}\t{path}")

    _each(names, one)


@weights_app.command("verify")
def verify(
    names: list[str] = typer.Argument(None, help="Model names; default: every cached model."),
    json_output: Json = False,
) -> None:
    """Re-hash cached files against the manifest; a mismatching file is removed."""
    manifest = lib.load_manifest()
    if not names:
        names = [entry.name for entry in manifest if lib.locate(entry) is not None]
        if not names:
            say(f"no model is cached in {lib.cache_root()}")

    def one(entry: lib.Entry) -> None:
        with download_progress() as progress:
            path = lib.verify(entry, progress=progress)
        if json_output:
            echo_json({"name": entry.name, "path": str(path), "sha256": lib.expected_sha256(entry)})
        else:
            typer.echo(f"{entry.name}\tok\t{path}")

    _each(names, one)


@weights_app.command("path")
def path(name: str = typer.Argument(..., help="Model name.")) -> None:
    """Print the local file of a cached model (never downloads)."""
    typer.echo(str(lib.local_path(lib.load_manifest().get(name))))


@weights_app.command("import")
def import_(
    name: str = typer.Argument(..., help="Model name the file belongs to."),
    file: Path = typer.Argument(..., help="The weights file you downloaded (.pth/.safetensors)."),
) -> None:
    """Check a downloaded file against NAME's architecture and copy it into the cache."""
    entry = lib.load_manifest().get(name)
    with download_progress() as progress:
        dest = lib.import_weights(entry, file, progress=progress)
    say(f"imported {file} as {entry.name} (sha256 {lib.expected_sha256(entry)})")
    typer.echo(str(dest))


@weights_app.command("remove")
def remove(names: list[str] = typer.Argument(..., help="Model names.")) -> None:
    """Delete the cached files of models (imported copies included); a trained model is
    unregistered, its file kept."""

    def one(entry: lib.Entry) -> None:
        if isinstance(entry.source, lib.LocalSource):
            lib.remove_weights(entry)
            typer.echo(f"{entry.name}\tunregistered\t{entry.source.file}")
            say(
                f"{entry.name} is no longer a model name; its file {entry.source.file} was kept "
                "(delete its run folder to free the space)."
            )
            return
        removed = lib.remove_weights(entry)
        for gone in removed:
            typer.echo(f"{entry.name}\tremoved\t{gone}")
        if not removed:
            say(f"{entry.name} was not cached")

    _each(names, one)
