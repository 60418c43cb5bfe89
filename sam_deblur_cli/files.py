"""The one atomic file writer: every file the tool writes goes through ``atomic_file``.

A write goes to a new temporary file in the destination's folder (so the rename stays on
one file system), is flushed and fsynced, then renamed over the destination with
``os.replace``; the folder is fsynced so the rename survives a power cut. On any failure,
Ctrl-C included, the temporary file is removed and an existing destination is untouched.
New files get the permissions of any new file under the process umask (0o666 less the
umask, never mkstemp's 0o600); ``atomic_folder`` does the same for a folder of files.

Errors pass through untranslated (``OSError`` and whatever the body raises): each caller
turns them into its own ``sam_deblur_cli.errors`` sentence. The one exception is running out
of space (``ENOSPC``, ``EDQUOT``, ``EFBIG``): that becomes ``OutOfSpaceError``, one line naming
the path and the free space, so that a batch stops instead of failing every later write.

A process killed outright (``kill -9``, an OOM kill) cannot remove its temporary files. Each
one is locked (``flock``) while its writer lives, so :func:`remove_stale_temporaries` tells
a dead writer's leftovers from a live writer's file and removes only the former; the
engines call it on their output folders before they start.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO, TextIO

from sam_deblur_cli.errors import OutOfSpaceError

try:
    import fcntl
except ImportError:  # Windows: no flock; stale temporaries are then left alone
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

_BINARY = getattr(os, "O_BINARY", 0)  # Windows: no newline translation
OUT_OF_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
# What _temporary_name makes: ".<stem>.<12 hex>.<kind><suffix>".
_TEMPORARY = re.compile(r"\..*\.[0-9a-f]{12}\.(tmp|old)(\.[^.]*)?")


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
    exception re-raised (out of space: as ``OutOfSpaceError``); ``path`` is then exactly as
    it was. The temporary file is locked until it is renamed (see the module docstring).
    """
    path = Path(path)
    temporary, file = _locked_new_file(path)
    try:
        try:
            with file:
                yield file
                file.flush()
                os.fsync(file.fileno())
                if fcntl is not None:  # renamed while locked: no cleaner takes a kept file
                    os.replace(temporary, path)
            if fcntl is None:  # Windows renames closed files only
                os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise_if_out_of_space(exc, path)
        raise
    fsync_folder(path.parent)


def _locked_new_file(path: Path) -> tuple[Path, BinaryIO]:
    """A new temporary file for ``path``, opened and locked. A cleaner may take a file in
    the instant between its creation and its lock; then it is gone and another is made."""
    while True:
        temporary = _temporary_name(path)
        try:
            file = open(temporary, "xb", opener=_new_file)  # noqa: SIM115 (the caller closes)
        except OSError as exc:
            raise_if_out_of_space(exc, path)
            raise
        if _lock(file.fileno(), temporary):
            return temporary, file
        file.close()


def _lock(fd: int, path: Path) -> bool:
    """Lock ``fd`` (waiting for a cleaner that holds it); False when ``path`` no longer
    names the locked file (a cleaner removed it first)."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:  # a file system without locks (some network mounts): write unlocked
        return True  # (a cleaner cannot lock it either, so it never removes it)
    try:
        return os.path.samestat(os.fstat(fd), os.lstat(path))
    except FileNotFoundError:
        return False


def raise_if_out_of_space(exc: OSError, path: Path) -> None:
    """Raise ``OutOfSpaceError`` (from ``exc``) when ``exc`` says the disk, a quota or the
    file-size limit is full; otherwise return and let the caller handle ``exc``."""
    if exc.errno not in OUT_OF_SPACE:
        return
    reason = exc.strerror or errno.errorcode.get(exc.errno or 0, str(exc))
    folder = path.parent
    try:
        free = f"{human_size(shutil.disk_usage(folder).free)} free in {folder}"
    except OSError:
        free = f"free space in {folder} unknown"
    raise OutOfSpaceError(
        f"Out of space writing {path} ({reason}; {free}): free some space or raise the "
        "limit, then run the same command again (finished outputs are kept)."
    ) from exc


def human_size(count: int) -> str:
    """``count`` bytes for people, in decimal units: ``512 B``, ``2.4 GB``."""
    size = float(count)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{count} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files and folders a killed writer left in ``folder`` (not below
    it); a live writer's are locked and kept. Returns what was removed. A missing folder,
    or a system without ``flock``, has none."""
    folder = Path(folder)
    if fcntl is None:
        return []
    try:
        names = [name for name in os.listdir(folder) if _TEMPORARY.fullmatch(name)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    removed = []
    for name in names:
        if _remove_if_unlocked(folder / name):
            removed.append(folder / name)
    if removed:
        logger.info(
            "removed %d temporary file(s) of an interrupted run in %s", len(removed), folder
        )
    return removed


def _remove_if_unlocked(path: Path) -> bool:
    assert fcntl is not None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # gone already (renamed or cleaned), or unreadable: not ours to judge
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a live writer holds it (or the file system has no locks)
            return False
        try:
            if not os.path.samestat(os.fstat(fd), os.lstat(path)):
                return False
        except FileNotFoundError:
            return False
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        return True
    finally:
        os.close(fd)


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
    staging, staging_lock = _temporary_folder(path, "tmp")
    old, old_lock = None, None
    try:
        try:
            yield staging
            if path.exists():
                old, old_lock = _temporary_folder(path, "old")
                os.replace(path, old / path.name)
            os.replace(staging, path)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        finally:
            _unlock(staging_lock)
        fsync_folder(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if old_lock is not None:
            _unlock(old_lock)


def _temporary_folder(beside: Path, kind: str) -> tuple[Path, int]:
    """A new empty hidden folder next to ``beside``, 0o777 less the umask (mkdtemp: 0o700),
    and the descriptor that holds its lock (``_unlock`` releases it; -1 without flock)."""
    while True:
        folder = _temporary_name(beside, kind)
        try:
            folder.mkdir(mode=0o777)
        except FileExistsError:
            continue
        if fcntl is None:
            return folder, -1
        fd = os.open(folder, os.O_RDONLY)
        if _lock(fd, folder):
            return folder, fd
        os.close(fd)


@contextmanager
def file_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive lock on the lock file ``path`` (created if missing, never removed:
    removing it would let two processes lock two different files) for the block. Processes
    that update the same read-modify-write record (a cache index) take it in turn. A no-op
    where ``flock`` is missing."""
    if fcntl is None:
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT | _BINARY, 0o666)
    try:
        with suppress(OSError):  # a file system without locks: go on unlocked
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _unlock(fd: int) -> None:
    if fd >= 0:
        os.close(fd)


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
