"""An entry's local weights file: find it, fetch it on first use, verify, import, remove.

These combine the cache's bookkeeping (``cache``) with the Hub transport (``hub``); an
imported copy always wins over the Hub cache. Progress is reported through
``ProgressCallback(label, done_bytes, total_bytes_or_None)`` with labels ``"download NAME"``,
``"verify NAME"`` and ``"import NAME"``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from sam_deblur_cli.errors import (
    CheckpointError,
    ChecksumError,
    UsageError,
    WeightsNotFoundError,
)
from sam_deblur_cli.files import atomic_file
from sam_deblur_cli.weights import cache, hub
from sam_deblur_cli.weights.cache import CHUNK, ProgressCallback
from sam_deblur_cli.weights.manifest import Entry, HubSource, LocalSource, PageSource
from sam_deblur_cli.weights.paths import cache_root


def locate(entry: Entry) -> Path | None:
    """The local weights file of ``entry`` (imported copy first, then the Hub cache), or None.

    Never touches the network and never hashes.
    """
    if isinstance(entry.source, LocalSource):
        local = Path(entry.source.file)
        return local if local.is_file() else None
    imported = cache.imported_copy(entry)
    if imported is not None:
        return imported
    if isinstance(entry.source, HubSource):
        return hub.cached(entry.source)
    return None


def _get_advice(entry: Entry) -> str:
    source = entry.source
    if isinstance(source, LocalSource):
        return f"its file {source.file} is missing: restore it or train the model again"
    if isinstance(source, PageSource):
        note = f" ({source.note})" if source.note else ""
        return (
            f"download {source.file} from the authors' page {source.page}{note}, then run "
            f"`sam-deblur weights import {entry.name} PATH/TO/{source.file}`"
        )
    return f"run `sam-deblur weights download {entry.name}`"


def local_path(entry: Entry) -> Path:
    """``locate(entry)``, or ``WeightsNotFoundError`` saying how to get the file."""
    path = locate(entry)
    if path is None:
        raise WeightsNotFoundError(f"{entry.name} is not in the cache; {_get_advice(entry)}.")
    return path


def verify(entry: Entry, *, progress: ProgressCallback | None = None) -> Path:
    """Re-hash ``entry``'s local file now; a mismatch removes it and raises ``ChecksumError``."""
    path = local_path(entry)
    if isinstance(entry.source, LocalSource):
        from sam_deblur_cli.weights.local import local_file

        cache.forget(path.resolve())  # hash it now
        return local_file(entry)
    cache.check(entry, path, progress=progress, force=True)
    return path


def ensure_weights(
    entry: Entry, *, offline: bool = False, progress: ProgressCallback | None = None
) -> Path:
    """The verified local weights file of ``entry``, downloading it on first use.

    ``offline`` (or ``$HF_HUB_OFFLINE``) restricts this to the cache. Raises
    ``WeightsNotFoundError`` saying exactly what to run when the file is not available,
    ``DownloadError`` when the Hub refuses or breaks off, ``ChecksumError`` (file removed) when
    the bytes are not the pinned ones. A local model's file is checked, never removed.
    """
    if isinstance(entry.source, LocalSource):
        from sam_deblur_cli.weights.local import local_file

        return local_file(entry)
    path = locate(entry)
    if path is None:
        if isinstance(entry.source, PageSource):
            raise WeightsNotFoundError(
                f"{entry.name} is not on the Hugging Face Hub: {_get_advice(entry)}."
            )
        if offline or hub.env_offline():
            why = "--offline" if offline else "HF_HUB_OFFLINE is set"
            raise WeightsNotFoundError(
                f"{entry.name} is not in the cache ({cache_root()}) and offline mode is on "
                f"({why}); run `sam-deblur weights download {entry.name}` with network access "
                f"(HF_ENDPOINT may name a mirror) or import a copy with "
                f"`sam-deblur weights import {entry.name} PATH/TO/{Path(entry.source.file).name}`."
            )
        path = hub.download(entry, entry.source, progress)
    cache.check(entry, path, progress=progress, force=False)
    return path


def hub_alternative(manifest: Iterable[Entry]) -> Entry | None:
    """The widest deblurring network of ``manifest`` that downloads from the Hub and takes no
    masks: what runs at once when a page-hosted model has not been imported yet."""
    ready = [e for e in manifest if e.kind == "deblur" and e.on_hub and not e.needs_masks]
    return max(ready, key=lambda e: e.net_config().width, default=None)


def with_alternative(exc: WeightsNotFoundError, manifest: Iterable[Entry]) -> WeightsNotFoundError:
    """``exc`` (a page-hosted deblurring model is missing) extended with the Hub model that
    works right away, when the manifest has one."""
    other = hub_alternative(manifest)
    if other is None:
        return exc
    return WeightsNotFoundError(
        f"{str(exc).rstrip('.')}; or deblur right away without masks with `-m {other.name}` "
        "(official NAFNet, downloaded from the Hugging Face Hub on first use)."
    )


def _copy_hashing(src: Path, fout: BinaryIO, progress: ProgressCallback | None, label: str) -> str:
    """Copy ``src`` into the open file ``fout`` and return the sha256 of the bytes written."""
    digest = hashlib.sha256()
    total = src.stat().st_size
    done = 0
    with src.open("rb") as fin:
        while chunk := fin.read(CHUNK):
            digest.update(chunk)
            fout.write(chunk)
            done += len(chunk)
            if progress is not None:
                progress(label, done, total)
    return digest.hexdigest()


def import_weights(
    entry: Entry, file: str | Path, *, progress: ProgressCallback | None = None
) -> Path:
    """Copy a weights file the user obtained into the cache so that ``entry`` resolves to it.

    The file must match the sha256 the manifest pins (if any) and load strictly into the
    entry's architecture (``models.check``); its sha256 is recorded. The user's file is only
    read.
    """
    from sam_deblur_cli.weights import models

    src = Path(file).expanduser()
    if not src.is_file():
        raise UsageError(f"{src} is not a file; pass the path of the downloaded weights file.")
    folder = cache_root() / "imported" / entry.name
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / src.name
    with atomic_file(dest) as fout:  # replaces ``dest`` only once every check has passed
        actual = _copy_hashing(src, fout, progress, f"import {entry.name}")
        if entry.sha256 and actual != entry.sha256:
            raise ChecksumError(
                f"{src} has sha256 {actual}, but the manifest pins {entry.sha256} for "
                f"{entry.name}; it is a different file, so it was not imported."
            )
        fout.flush()
        tmp = Path(fout.name)
        try:
            models.check(entry, tmp)  # the copy, so what was checked is what is kept
        except CheckpointError as exc:
            detail = str(exc).replace(str(tmp), str(src))
            raise CheckpointError(f"{src} cannot be imported as {entry.name}: {detail}") from exc
    cache.record_import(entry, src, dest, actual)
    return dest


def remove_weights(entry: Entry) -> list[Path]:
    """Delete every local copy of ``entry`` (imported and Hub cache); return what was removed."""
    removed: list[Path] = []
    if isinstance(entry.source, LocalSource):
        from sam_deblur_cli.weights.local import remove_local_model

        remove_local_model(entry.name)  # the trained file stays in its run folder
        return removed
    imported = cache.imported_copy(entry)
    if imported is not None:
        cache.discard(imported)
        removed.append(imported)
    cache.forget_import(entry)
    if isinstance(entry.source, HubSource):
        cached = hub.cached(entry.source)
        if cached is not None:
            cache.discard(cached)
            removed.append(cached)
    return removed
