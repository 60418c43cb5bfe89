"""The one atomic file writer: every file the tool writes goes through ``atomic_file``.

A write goes to a new temporary file in the destination's folder (so the rename stays on
one file system), is flushed and fsynced, then renamed over the destination with
``os.replace``; the folder is fsynced so the rename survives a power cut. On any failure,
Ctrl-C included, the temporary file is removed and an existing destination is untouched.
New files get the permissions of any new file under the process umask (0o666 less the
umask, never mkstemp's 0o600); ``atomic_folder`` does the same for a folder of files.

Errors pass through untranslated (``OSError`` and whatever the body raises): each caller
turns them into its own ``sam_deblur_cli.errors`` sentence.
"""

from __future__ import annotations

import io
import logging
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, TextIO

logger = logging.getLogger(__name__)

_BINARY = getattr(os, "O_BINARY", 0)  # Windows: no newline translation


def _new_file(path: str, flags: int) -> int:
    # 0o666 so that the umask applies as for any new file (mkstemp would force 0o600).
    return os.open(path, flags | _BINARY, 0o666)


def _temporary_name(path: Path, kind: str = "tmp") -> Path:
    """A hidden name beside ``path`` that no other writer picks, keeping its suffix (readers
    such as the checkpoint loader go by it): ``a/b.pth`` -> ``a/.b.<random>.tmp.pth``."""
    return path.with_name(f".{path.stem}.{secrets.token_hex(6)}.{kind}{path.suffix}")


@contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Yield a binary file that replaces ``path`` when the block ends without an exception.

    The file's ``name`` is the temporary path (to read back what was written before it is
    kept). The folder must exist. On an exception the temporary file is removed and the
    exception re-raised; ``path`` is then exactly as it was.
    """
    path = Path(path)
    temporary = _temporary_name(path)
    file = open(temporary, "xb", opener=_new_file)  # noqa: SIM115 (closed below)
    try:
        with file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)


@contextmanager
def atomic_text_file(
    path: str | os.PathLike[str], *, encoding: str = "utf-8", newline: str | None = None
) -> Iterator[TextIO]:
    """``atomic_file`` as text (``encoding``; ``newline`` as for ``open``)."""
    with atomic_file(path) as raw:
        text = io.TextIOWrapper(raw, encoding=encoding, newline=newline)
        yield text
        text.flush()  # what is left of the wrapper closes with ``raw``, unflushed


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Replace ``path`` with ``data`` atomically; returns ``path``."""
    with atomic_file(path) as file:
        file.write(data)
    return Path(path)


def write_text(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8") -> Path:
    """Replace ``path`` with ``text`` (no newline translation) atomically; returns ``path``."""
    return write_bytes(path, text.encode(encoding))


@contextmanager
def atomic_folder(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty staging folder that takes ``path``'s place, whole, when the block ends
    without an exception (an old ``path`` is then removed); a reader never sees a mix of two
    versions. On an exception the staging folder is removed and ``path`` is untouched.
    Files written inside should go through ``atomic_file`` (fsynced)."""
    path = Path(path)
    staging = _temporary_folder(path, "tmp")
    try:
        yield staging
        old = None
        if path.exists():
            old = _temporary_folder(path, "old")
            os.replace(path, old / path.name)
        os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_folder(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _temporary_folder(beside: Path, kind: str) -> Path:
    """A new empty hidden folder next to ``beside``, 0o777 less the umask (mkdtemp: 0o700)."""
    while True:
        folder = _temporary_name(beside, kind)
        try:
            folder.mkdir(mode=0o777)
        except FileExistsError:
            continue
        return folder


def fsync_folder(folder: str | os.PathLike[str]) -> None:
    """Make renames in ``folder`` durable; a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        logger.debug("fsync of folder %s is not supported here.", folder)
    finally:
        os.close(fd)
