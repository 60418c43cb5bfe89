"""Hugging Face Hub transport: the only module that imports ``huggingface_hub``.

It is imported inside the functions that need it, so importing this module stays cheap for
the CLI. Files land in ``paths.hub_cache_dir()`` at the manifest's pinned revision; failures
become one ``WeightsError`` sentence of advice. ``httpx2`` (transport errors that
huggingface_hub lets through) and ``tqdm`` (its progress-bar hook) are declared dependencies.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from sam_deblur_cli._version import __version__
from sam_deblur_cli.errors import DownloadError, WeightsError, WeightsNotFoundError
from sam_deblur_cli.weights.cache import ProgressCallback
from sam_deblur_cli.weights.manifest import Entry, HubSource
from sam_deblur_cli.weights.paths import LIBRARY_NAME, hub_cache_dir

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"


def hub_endpoint() -> str:
    """The Hub or mirror to download from, read at call time (``$HF_ENDPOINT``)."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def env_offline() -> bool:
    """Whether ``$HF_HUB_OFFLINE`` (or ``$TRANSFORMERS_OFFLINE``) is set now."""
    # huggingface_hub reads HF_HUB_OFFLINE once at import; we honour its current value.
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def cached(source: HubSource) -> Path | None:
    """The file of ``source`` in our Hub cache, or None; never touches the network."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(
        source.repo, source.file, cache_dir=hub_cache_dir(), revision=source.revision
    )
    return Path(found) if isinstance(found, str) else None


def download(entry: Entry, source: HubSource, progress: ProgressCallback | None) -> Path:
    """Fetch ``source`` into the Hub cache (unverified); ``WeightsError`` with advice on failure.

    Progress goes to ``progress`` labelled ``"download NAME"``.
    """
    import httpx2
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

    endpoint = hub_endpoint()
    url = hf_hub_url(source.repo, source.file, revision=source.revision, endpoint=endpoint)
    try:
        # One HEAD without retries first: huggingface_hub retries an unreachable endpoint for
        # ~20 s before giving up, while a wrong mirror or a missing network should fail at once.
        get_hf_file_metadata(
            url, library_name=LIBRARY_NAME, library_version=__version__, endpoint=endpoint
        )
        log.info("downloading %s from %s", entry.name, url)
        found = hf_hub_download(
            source.repo,
            source.file,
            revision=source.revision,
            cache_dir=hub_cache_dir(),
            library_name=LIBRARY_NAME,
            library_version=__version__,
            endpoint=endpoint,
            tqdm_class=_progress_relay(progress, f"download {entry.name}"),
        )
    # huggingface_hub's own errors are OSErrors; transport errors come straight from httpx2.
    except (OSError, httpx2.TransportError) as exc:
        raise _translate(entry, source, endpoint, exc) from exc
    return Path(found)


def _translate(entry: Entry, source: HubSource, endpoint: str, exc: Exception) -> WeightsError:
    """Turn a huggingface_hub / transport failure into one sentence of advice."""
    import httpx2
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    name, check = entry.name, f"check HF_ENDPOINT and the source of {entry.name} in the manifest"
    cause = exc.__cause__ if isinstance(exc, LocalEntryNotFoundError) and exc.__cause__ else exc
    reason = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
    if isinstance(exc, RepositoryNotFoundError):
        problem = f"{endpoint} has no repository {source.repo} (or it is private)"
    elif isinstance(exc, RevisionNotFoundError):
        problem = f"{endpoint} has no revision {source.revision} of {source.repo}"
    elif isinstance(exc, RemoteEntryNotFoundError):
        problem = f"{source.repo}@{source.revision[:12]} on {endpoint} has no file {source.file}"
    elif isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else "an error"
        problem = f"{endpoint} answered HTTP {status}"
        check = f"try again later, set HF_ENDPOINT to a mirror, or {_import_advice(entry, source)}"
    elif isinstance(cause, OfflineModeIsEnabled):
        return WeightsNotFoundError(
            f"{name} is not in the cache and huggingface_hub is in offline mode; unset "
            f"HF_HUB_OFFLINE and run `sam-deblur weights download {name}`."
        )
    elif isinstance(cause, httpx2.TransportError):
        problem = f"{endpoint} cannot be reached ({reason})"
        check = "check the network connection, set HF_ENDPOINT to a mirror, or " + _import_advice(
            entry, source
        )
    else:
        problem, check = f"the download broke off ({reason})", "run the command again"
    return DownloadError(f"Cannot download {name}: {problem}; {check}.")


def _import_advice(entry: Entry, source: HubSource) -> str:
    """How to get the file without this machine reaching the Hub: the file users download
    (its usual name) and the import command."""
    name = Path(source.file).name
    page = f"{DEFAULT_ENDPOINT}/{source.repo}/resolve/{source.revision}/{source.file}"
    return (
        f"download {name} on another machine ({page}) and run "
        f"`sam-deblur weights import {entry.name} PATH/TO/{name}`"
    )


def _progress_relay(progress: ProgressCallback | None, label: str) -> type:
    """A tqdm class that never draws and forwards byte counts to ``progress``.

    huggingface_hub instantiates it for its download bars (HTTP and Xet), so its own bars stay
    hidden and the caller renders one progress display of its own.
    """
    from tqdm import tqdm

    class _Relay(tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)
            self._done = int(kwargs.get("initial") or 0)

        def update(self, n: float | None = 1) -> bool | None:
            # Negative steps happen when a resumed download must restart from zero.
            self._done = max(0, self._done + int(n or 0))
            if progress is not None:
                progress(label, self._done, self.total)
            return None

        def update_transfer(self, n: float) -> None:
            """Xet reports network bytes here; only bytes written to disk are counted."""

    return _Relay
