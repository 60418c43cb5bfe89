"""The weights cache on disk: its folders, the imported copies' index, the verified-hash memory.

Layout under ``paths.cache_root()`` (``$SAM_DEBLUR_HOME``, else the platformdirs user cache):

    hub/                      huggingface_hub cache (blobs + snapshot links, pinned revisions)
    imported/NAME/FILE        copies made by ``import_weights`` (the user's file is never touched)
    imported/index.json       {NAME: {"file", "sha256", "size", "source"}} for those copies
    verified.json             {real path: {"size", "mtime_ns", "sha256"}}: what was hashed, so
                              ordinary runs do not re-hash gigabytes
    .verified.json.lock       taken while a process updates verified.json (same for the index)

Only bookkeeping and hashing: no network (``hub``), no torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sam_deblur_cli.errors import ChecksumError
from sam_deblur_cli.files import atomic_text_file, file_lock
from sam_deblur_cli.weights.manifest import Entry
from sam_deblur_cli.weights.paths import cache_root

log = logging.getLogger(__name__)

ProgressCallback = Callable[[str, int, "int | None"], None]
"""``(label, done_bytes, total_bytes_or_None)``; labels look like ``"verify NAME"``."""

CHUNK = 4 << 20  # bytes read at a time when hashing or copying


# --------------------------------------------------------------------------- json records


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        # Only bookkeeping: losing it costs a re-hash, never a wrong answer.
        log.warning("ignoring unreadable %s (%s)", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_text_file(path) as f:
        json.dump(data, f, indent=1, sort_keys=True)


@contextmanager
def _updating(path: Path) -> Iterator[dict[str, Any]]:
    """Read, change and write back the JSON record ``path`` under its lock file, so that two
    processes (two downloads at once) never lose each other's update; written only if changed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path.with_name(f".{path.name}.lock")):
        records = _read_json(path)
        before = json.dumps(records, sort_keys=True)
        yield records
        if json.dumps(records, sort_keys=True) != before:
            _write_json(path, records)


def _verified_path() -> Path:
    return cache_root() / "verified.json"


def _imported_index() -> Path:
    return cache_root() / "imported" / "index.json"


# --------------------------------------------------------------------------- verified hashes


def remember(real: Path, sha256: str) -> None:
    """Record that ``real`` (a resolved path), as it is now, has ``sha256``."""
    st = real.stat()
    with _updating(_verified_path()) as records:
        records[str(real)] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256}


def forget(real: Path) -> None:
    """Drop what was recorded for ``real``, so that the next check hashes it again."""
    with _updating(_verified_path()) as records:
        records.pop(str(real), None)


def remembered_sha256(real: Path) -> str | None:
    """The sha256 recorded for ``real`` if the file is unchanged since (same size and mtime)."""
    record = _read_json(_verified_path()).get(str(real))
    if not isinstance(record, dict):
        return None
    try:
        st = real.stat()
    except OSError:
        return None
    if record.get("size") != st.st_size or record.get("mtime_ns") != st.st_mtime_ns:
        return None
    sha = record.get("sha256")
    return sha if isinstance(sha, str) else None


def sha256_file(path: Path, *, progress: ProgressCallback | None = None, label: str = "") -> str:
    """Hex sha256 of a file, reporting ``(label, bytes_done, total)`` as it reads."""
    digest = hashlib.sha256()
    total = path.stat().st_size
    done = 0
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    with path.open("rb", buffering=0) as f:
        while n := f.readinto(buffer):
            digest.update(view[:n])
            done += n
            if progress is not None:
                progress(label, done, total)
    return digest.hexdigest()


# --------------------------------------------------------------------------- imported copies


def _imported_record(entry: Entry) -> dict[str, Any] | None:
    record = _read_json(_imported_index()).get(entry.name)
    return record if isinstance(record, dict) else None


def imported_copy(entry: Entry) -> Path | None:
    """The copy ``import_weights`` made of ``entry``'s file, if it is still there."""
    record = _imported_record(entry)
    if record is None:
        return None
    path = cache_root() / "imported" / entry.name / str(record.get("file", ""))
    return path if path.is_file() else None


def record_import(entry: Entry, src: Path, dest: Path, sha256: str) -> None:
    """Index ``dest`` (in ``imported/NAME/``) as ``entry``'s copy of ``src``; drop an older one."""
    with _updating(_imported_index()) as index:
        old = index.get(entry.name)
        if isinstance(old, dict) and old.get("file") not in (None, dest.name):
            discard(dest.parent / str(old["file"]))
        index[entry.name] = {
            "file": dest.name,
            "sha256": sha256,
            "size": dest.stat().st_size,
            "source": str(src.resolve()),
        }
    remember(dest.resolve(), sha256)


def forget_import(entry: Entry) -> None:
    """Drop ``entry`` from the imported index (its file is removed separately)."""
    with _updating(_imported_index()) as index:
        index.pop(entry.name, None)


# --------------------------------------------------------------------------- checking


def expected_sha256(entry: Entry) -> str:
    """The sha256 a local file must have: the manifest's pin, else the one recorded at import."""
    if entry.sha256:
        return entry.sha256
    record = _imported_record(entry)
    sha = record.get("sha256", "") if record else ""
    return sha if isinstance(sha, str) else ""


def is_verified(entry: Entry, path: Path) -> bool:
    """Whether ``path`` was hashed before, is unchanged since, and matched ``entry``'s sha256."""
    expected = expected_sha256(entry)
    return bool(expected) and remembered_sha256(path.resolve()) == expected


def discard(path: Path) -> None:
    """Remove a weights file: for the Hub cache both the snapshot link and the blob."""
    real = path.resolve()
    path.unlink(missing_ok=True)
    real.unlink(missing_ok=True)
    forget(real)


def check(entry: Entry, path: Path, *, progress: ProgressCallback | None, force: bool) -> None:
    """Hash ``path`` (unless remembered and not ``force``) against ``entry``'s sha256.

    A mismatch removes the file and raises ``ChecksumError``; a match is remembered.
    """
    expected = expected_sha256(entry)
    real = path.resolve()
    if not force and expected and remembered_sha256(real) == expected:
        return
    actual = sha256_file(real, progress=progress, label=f"verify {entry.name}")
    if expected and actual != expected:
        imported = imported_copy(entry) == path
        discard(path)
        again = (
            f"import the right file with `sam-deblur weights import {entry.name} FILE`"
            if imported or not entry.on_hub
            else f"run `sam-deblur weights download {entry.name}` to fetch it again"
        )
        raise ChecksumError(
            f"{path.name} for {entry.name} has sha256 {actual}, but {expected} is expected; "
            f"the file was removed, {again}."
        )
    remember(real, actual)
