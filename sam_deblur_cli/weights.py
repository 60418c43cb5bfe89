"""Model weights: the manifest (weights.toml), the cache, Hub downloads, sha256 checks, imports.

The only module that imports ``huggingface_hub`` (inside the functions that need it, so that
importing this module stays cheap for the CLI).

Cache layout under ``cache_root()`` (``$SAM_DEBLUR_HOME``, else the platformdirs user cache):

    hub/                      huggingface_hub cache (blobs + snapshot links, pinned revisions)
    imported/NAME/FILE        copies made by ``import_weights`` (the user's file is never touched)
    imported/index.json       {NAME: {"file", "sha256", "size", "source"}} for those copies
    verified.json             {real path: {"size", "mtime_ns", "sha256"}}: what was hashed, so
                              ordinary runs do not re-hash gigabytes

Progress is reported through ``ProgressCallback(label, done_bytes, total_bytes_or_None)``;
labels look like ``"download NAME"`` and ``"verify NAME"``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping, Set
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

from sam_deblur_cli._version import __version__
from sam_deblur_cli.errors import (
    CheckpointError,
    ChecksumError,
    DownloadError,
    SetupError,
    UsageError,
    WeightsError,
    WeightsNotFoundError,
)
from sam_deblur_cli.files import atomic_file, atomic_text_file
from sam_deblur_cli.masks.recipe import AMG_KEYS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 needs the tomli backport
    import tomli as tomllib

if TYPE_CHECKING:
    import torch

    from sam_deblur_cli.nets import NetConfig

log = logging.getLogger(__name__)

ProgressCallback = Callable[[str, int, "int | None"], None]

LIBRARY_NAME = "sam-deblur"
DEFAULT_ENDPOINT = "https://huggingface.co"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_COMMIT = re.compile(r"[0-9a-f]{40}")
_ARCH = re.compile(r"[a-z][a-z0-9_]*")
_CHUNK = 4 << 20

Kind = Literal["sam", "deblur"]
ChannelOrder = Literal["bgr", "rgb"]

# fmt: off
_ENTRY_KEYS = frozenset({
    "kind", "arch", "description", "license", "homepage", "sha256", "size", "source",
    "net", "recipe", "tlc", "mask_value",
})
_HUB_KEYS = frozenset({"hub", "revision", "file"})
_PAGE_KEYS = frozenset({"page", "file", "note"})
_RECIPE_KEYS = frozenset({"sam", "channel_order", "amg"})
# fmt: on
_SAM_ARCHS = ("vit_b", "vit_l", "vit_h")
_VARIANTS = ("plain", "cat", "map")


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class HubSource:
    """A file in a Hugging Face Hub model repo at a pinned 40-hex commit."""

    repo: str
    revision: str
    file: str


@dataclass(frozen=True)
class PageSource:
    """A file the authors host outside the Hub: downloaded by hand from ``page``, then imported.

    ``note`` says where the page's links lead (e.g. "Baidu Netdisk and OneDrive links").
    """

    page: str
    file: str
    note: str = ""


@dataclass(frozen=True)
class Recipe:
    """How a deblur model's training masks were made; SAM must see images the same way.

    ``sam``: manifest name of the SAM entry; ``channel_order``: the order the image is handed
    to SAM in ("bgr" for the published checkpoints); ``amg``: SamAutomaticMaskGenerator keyword
    arguments (treat as read-only).
    """

    name: str
    sam: str
    channel_order: ChannelOrder
    amg: dict[str, float | int] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class Entry:
    """One manifest entry. ``sha256`` is "" and ``size`` None while unknown (drive-hosted)."""

    name: str
    kind: Kind
    source: HubSource | PageSource
    sha256: str
    size: int | None
    license: str
    homepage: str
    description: str = ""
    arch: str | None = None  # SAM: "vit_b" | "vit_l" | "vit_h"
    net: NetConfig | None = None  # deblur
    recipe: Recipe | None = None  # deblur cat/map
    tlc: bool = False

    @property
    def on_hub(self) -> bool:
        """Whether the file downloads from the Hub (else it must be imported by hand)."""
        return isinstance(self.source, HubSource)

    @property
    def needs_masks(self) -> bool:
        """Whether the network takes a SAM guide (cat and map variants)."""
        return self.net is not None and self.net.variant != "plain"

    def net_config(self) -> NetConfig:
        """The network architecture of a deblur entry."""
        if self.net is None:
            raise UsageError(f"{self.name} is a {self.kind} model, not a deblurring network.")
        return self.net


@dataclass(frozen=True)
class Manifest:
    """The parsed weights.toml: entries by name, in file order."""

    path: Path
    entries: Mapping[str, Entry] = field(hash=False)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries.values())

    def __len__(self) -> int:
        return len(self.entries)

    def names(self, kind: Kind | None = None) -> list[str]:
        """Entry names in file order, optionally only those of one kind."""
        return [e.name for e in self if kind is None or e.kind == kind]

    def get(self, name: str) -> Entry:
        try:
            return self.entries[name]
        except KeyError:
            known = ", ".join(self.names())
            raise UsageError(
                f"Unknown model {name!r}; use one of {known} (see `sam-deblur weights list`)."
            ) from None


# --------------------------------------------------------------------------- manifest


def manifest_path() -> Path:
    """``$SAM_DEBLUR_WEIGHTS``, else the copy packaged in the wheel, else the repo-root copy."""
    override = os.environ.get("SAM_DEBLUR_WEIGHTS")
    if override:
        return Path(override).expanduser()
    from importlib.resources import files

    packaged = files("sam_deblur_cli").joinpath("weights.toml")
    if packaged.is_file():
        return Path(str(packaged))
    # Editable installs: the manifest sits at the repository root, beside the package.
    return Path(__file__).resolve().parent.parent / "weights.toml"


def load_manifest(path: str | Path | None = None) -> Manifest:
    """Read and validate a manifest (default: ``manifest_path()``)."""
    path = Path(path) if path is not None else manifest_path()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SetupError(
            f"Weights manifest {path} does not exist; fix SAM_DEBLUR_WEIGHTS or reinstall."
        ) from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SetupError(f"Weights manifest {path} cannot be read ({exc}); fix the file.") from exc
    return _parse_manifest(path, data)


def _invalid(path: Path, where: str, problem: str) -> SetupError:
    return SetupError(f"Weights manifest {path} is invalid at {where}: {problem}; fix the file.")


def _check_keys(path: Path, where: str, table: Any, allowed: Set[str], required: Set[str]) -> None:
    if not isinstance(table, dict):
        raise _invalid(path, where, "expected a table")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise _invalid(path, where, f"unknown key(s) {', '.join(unknown)}")
    missing = sorted(required - set(table))
    if missing:
        raise _invalid(path, where, f"missing key(s) {', '.join(missing)}")


def _parse_manifest(path: Path, data: dict[str, Any]) -> Manifest:
    _check_keys(path, "the top level", data, {"schema", "recipes", "models"}, {"models"})
    if data.get("schema", 1) != 1:
        raise _invalid(path, "schema", f"version {data['schema']!r} is not supported (only 1)")
    recipes_raw = data.get("recipes", {})
    _check_keys(path, "recipes", recipes_raw, set(recipes_raw), set())
    recipes = {name: _parse_recipe(path, name, raw) for name, raw in recipes_raw.items()}
    models = data["models"]
    _check_keys(path, "models", models, set(models), set())
    entries = {name: _parse_entry(path, name, raw, recipes) for name, raw in models.items()}
    for entry in entries.values():
        if entry.recipe is not None:
            sam = entries.get(entry.recipe.sam)
            if sam is None or sam.kind != "sam":
                where = f"recipes.{entry.recipe.name}.sam"
                raise _invalid(path, where, f"{entry.recipe.sam!r} is not a SAM entry")
    return Manifest(path=path, entries=entries)


def _parse_recipe(path: Path, name: str, raw: Any) -> Recipe:
    where = f"recipes.{name}"
    _check_keys(path, where, raw, _RECIPE_KEYS, {"sam", "channel_order"})
    if raw["channel_order"] not in ("bgr", "rgb"):
        raise _invalid(path, f"{where}.channel_order", "use 'bgr' or 'rgb'")
    amg = raw.get("amg", {})
    _check_keys(path, f"{where}.amg", amg, AMG_KEYS, set())
    for key, value in amg.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _invalid(path, f"{where}.amg.{key}", "expected a number")
    return Recipe(name=name, sam=str(raw["sam"]), channel_order=raw["channel_order"], amg=amg)


def _parse_entry(path: Path, name: str, raw: Any, recipes: Mapping[str, Recipe]) -> Entry:
    where = f"models.{name}"
    _check_keys(path, where, raw, _ENTRY_KEYS, {"kind", "source", "license", "homepage"})
    kind = raw["kind"]
    if kind not in ("sam", "deblur"):
        raise _invalid(path, f"{where}.kind", f"unknown kind {kind!r} (use 'sam' or 'deblur')")
    sha256 = str(raw.get("sha256", "")).lower()
    if sha256 and not _SHA256.fullmatch(sha256):
        raise _invalid(path, f"{where}.sha256", 'expected 64 hex digits (or "" while unknown)')
    size = raw.get("size", 0)
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise _invalid(path, f"{where}.size", "expected a byte count (0 while unknown)")
    source = _parse_source(path, f"{where}.source", raw["source"])
    if isinstance(source, HubSource) and not sha256:
        raise _invalid(path, f"{where}.sha256", "a Hub source needs the file's sha256")
    kind_fields = (
        _sam_fields(path, where, raw)
        if kind == "sam"
        else _deblur_fields(path, where, raw, recipes)
    )
    return Entry(
        name=name,
        kind=kind,
        source=source,
        sha256=sha256,
        size=size or None,
        license=str(raw["license"]),
        homepage=str(raw["homepage"]),
        description=str(raw.get("description", "")),
        **kind_fields,
    )


def _sam_fields(path: Path, where: str, raw: dict[str, Any]) -> dict[str, Any]:
    for key in ("net", "recipe", "tlc", "mask_value"):
        if key in raw:
            raise _invalid(path, f"{where}.{key}", "only deblur entries take this key")
    # Any segment_anything.sam_model_registry key (tests register tiny ones); the registry
    # itself is only consulted when a network is built.
    if not _ARCH.fullmatch(str(raw.get("arch", ""))):
        known = ", ".join(_SAM_ARCHS)
        raise _invalid(path, f"{where}.arch", f"name a SAM architecture ({known})")
    return {"arch": raw["arch"]}


def _deblur_fields(
    path: Path, where: str, raw: dict[str, Any], recipes: Mapping[str, Recipe]
) -> dict[str, Any]:
    if "arch" in raw:
        raise _invalid(path, f"{where}.arch", "deblur entries describe their network in 'net'")
    net = _parse_net(path, f"{where}.net", raw.get("net"))
    recipe = recipes.get(raw["recipe"]) if "recipe" in raw else None
    if "recipe" in raw and recipe is None:
        raise _invalid(path, f"{where}.recipe", f"no [recipes.{raw['recipe']}] table")
    if (net.variant != "plain") != (recipe is not None):
        raise _invalid(path, f"{where}.recipe", "cat/map networks need a recipe, plain ones none")
    tlc = raw.get("tlc", False)
    if not isinstance(tlc, bool):
        raise _invalid(path, f"{where}.tlc", "expected true or false")
    if "mask_value" in raw:
        net = _with_mask_value(path, f"{where}.mask_value", net, raw["mask_value"])
    return {"net": net, "recipe": recipe, "tlc": tlc}


def _with_mask_value(path: Path, where: str, net: NetConfig, raw: Any) -> NetConfig:
    """``net`` with the entry's mask value (map networks only; they default to 1/255)."""
    from dataclasses import replace

    from sam_deblur_cli.nets import parse_mask_value

    if net.variant != "map":
        raise _invalid(path, where, "only map networks take a mask value")
    try:
        return replace(net, mask_value=parse_mask_value(raw))
    except ValueError as exc:
        raise _invalid(path, where, str(exc)) from None


def _parse_source(path: Path, where: str, raw: Any) -> HubSource | PageSource:
    if isinstance(raw, dict) and "hub" in raw:
        _check_keys(path, where, raw, _HUB_KEYS, _HUB_KEYS)
        if not _COMMIT.fullmatch(str(raw["revision"])):
            raise _invalid(path, f"{where}.revision", "pin a full 40-hex commit, not a branch")
        return HubSource(repo=str(raw["hub"]), revision=raw["revision"], file=str(raw["file"]))
    _check_keys(path, where, raw, _PAGE_KEYS, {"page", "file"})
    return PageSource(page=str(raw["page"]), file=str(raw["file"]), note=str(raw.get("note", "")))


def _parse_net(path: Path, where: str, raw: Any) -> NetConfig:
    from sam_deblur_cli.nets import NetConfig

    allowed = {f.name for f in fields(NetConfig)} - {"mask_value"}  # an entry-level key
    _check_keys(path, where, raw, allowed, {"variant", "width"})
    if raw["variant"] not in _VARIANTS:
        raise _invalid(path, f"{where}.variant", f"use one of {', '.join(_VARIANTS)}")
    if "seg_channel" in raw and raw["variant"] != "map":
        raise _invalid(path, f"{where}.seg_channel", "only map networks have a seg_channel")
    args: dict[str, Any] = {"variant": raw["variant"]}
    for key, value in raw.items():
        if key == "variant":
            continue
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise _invalid(path, f"{where}.{key}", "expected whole numbers")
        args[key] = tuple(value) if isinstance(value, list) else value
    return NetConfig(**args)


# --------------------------------------------------------------------------- cache


def cache_root() -> Path:
    """Where weights live: ``$SAM_DEBLUR_HOME``, else the user cache dir for ``sam-deblur``."""
    override = os.environ.get("SAM_DEBLUR_HOME")
    if override:
        return Path(override).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir(LIBRARY_NAME, appauthor=False))


def hub_cache_dir() -> Path:
    """The huggingface_hub cache inside ours (never the user's shared ~/.cache/huggingface)."""
    return cache_root() / "hub"


def hub_endpoint() -> str:
    """The Hub or mirror to download from, read at call time (``$HF_ENDPOINT``)."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def _env_offline() -> bool:
    # huggingface_hub reads HF_HUB_OFFLINE once at import; we honour its current value.
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


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


def _verified_path() -> Path:
    return cache_root() / "verified.json"


def _imported_index() -> Path:
    return cache_root() / "imported" / "index.json"


def _remember(real: Path, sha256: str) -> None:
    st = real.stat()
    records = _read_json(_verified_path())
    records[str(real)] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256}
    _write_json(_verified_path(), records)


def _forget(real: Path) -> None:
    records = _read_json(_verified_path())
    if records.pop(str(real), None) is not None:
        _write_json(_verified_path(), records)


def _remembered_sha256(real: Path) -> str | None:
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
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    with path.open("rb", buffering=0) as f:
        while n := f.readinto(buffer):
            digest.update(view[:n])
            done += n
            if progress is not None:
                progress(label, done, total)
    return digest.hexdigest()


# --------------------------------------------------------------------------- locating


def _imported_record(entry: Entry) -> dict[str, Any] | None:
    record = _read_json(_imported_index()).get(entry.name)
    return record if isinstance(record, dict) else None


def _imported_copy(entry: Entry) -> Path | None:
    record = _imported_record(entry)
    if record is None:
        return None
    path = cache_root() / "imported" / entry.name / str(record.get("file", ""))
    return path if path.is_file() else None


def _hub_cached(source: HubSource) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(
        source.repo, source.file, cache_dir=hub_cache_dir(), revision=source.revision
    )
    return Path(found) if isinstance(found, str) else None


def locate(entry: Entry) -> Path | None:
    """The local weights file of ``entry`` (imported copy first, then the Hub cache), or None.

    Never touches the network and never hashes.
    """
    imported = _imported_copy(entry)
    if imported is not None:
        return imported
    if isinstance(entry.source, HubSource):
        return _hub_cached(entry.source)
    return None


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
    return bool(expected) and _remembered_sha256(path.resolve()) == expected


# --------------------------------------------------------------------------- verifying


def _discard(path: Path) -> None:
    """Remove a weights file: for the Hub cache both the snapshot link and the blob."""
    real = path.resolve()
    path.unlink(missing_ok=True)
    real.unlink(missing_ok=True)
    _forget(real)


def _check(entry: Entry, path: Path, *, progress: ProgressCallback | None, force: bool) -> None:
    expected = expected_sha256(entry)
    real = path.resolve()
    if not force and expected and _remembered_sha256(real) == expected:
        return
    actual = sha256_file(real, progress=progress, label=f"verify {entry.name}")
    if expected and actual != expected:
        imported = _imported_copy(entry) == path
        _discard(path)
        again = (
            f"import the right file with `sam-deblur weights import {entry.name} FILE`"
            if imported or not entry.on_hub
            else f"run `sam-deblur weights download {entry.name}` to fetch it again"
        )
        raise ChecksumError(
            f"{path.name} for {entry.name} has sha256 {actual}, but {expected} is expected; "
            f"the file was removed, {again}."
        )
    _remember(real, actual)


def verify(entry: Entry, *, progress: ProgressCallback | None = None) -> Path:
    """Re-hash ``entry``'s local file now; a mismatch removes it and raises ``ChecksumError``."""
    path = local_path(entry)
    _check(entry, path, progress=progress, force=True)
    return path


# --------------------------------------------------------------------------- ensure / download


def _get_advice(entry: Entry) -> str:
    source = entry.source
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


def ensure_weights(
    entry: Entry, *, offline: bool = False, progress: ProgressCallback | None = None
) -> Path:
    """The verified local weights file of ``entry``, downloading it on first use.

    ``offline`` (or ``$HF_HUB_OFFLINE``) restricts this to the cache. Raises
    ``WeightsNotFoundError`` saying exactly what to run when the file is not available,
    ``DownloadError`` when the Hub refuses or breaks off, ``ChecksumError`` (file removed) when
    the bytes are not the pinned ones.
    """
    path = locate(entry)
    if path is None:
        if isinstance(entry.source, PageSource):
            raise WeightsNotFoundError(
                f"{entry.name} is not on the Hugging Face Hub: {_get_advice(entry)}."
            )
        if offline or _env_offline():
            why = "--offline" if offline else "HF_HUB_OFFLINE is set"
            raise WeightsNotFoundError(
                f"{entry.name} is not in the cache ({cache_root()}) and offline mode is on "
                f"({why}); run `sam-deblur weights download {entry.name}` with network access "
                f"(HF_ENDPOINT may name a mirror) or import a copy with "
                f"`sam-deblur weights import {entry.name} PATH/TO/{Path(entry.source.file).name}`."
            )
        path = _download(entry, entry.source, progress)
    _check(entry, path, progress=progress, force=False)
    return path


def _download(entry: Entry, source: HubSource, progress: ProgressCallback | None) -> Path:
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
        problem, check = f"{endpoint} answered HTTP {status}", "try again later or use a mirror"
    elif isinstance(cause, OfflineModeIsEnabled):
        return WeightsNotFoundError(
            f"{name} is not in the cache and huggingface_hub is in offline mode; unset "
            f"HF_HUB_OFFLINE and run `sam-deblur weights download {name}`."
        )
    elif isinstance(cause, httpx2.TransportError):
        problem = f"{endpoint} cannot be reached ({reason})"
        check = "check the network connection or set HF_ENDPOINT to a mirror"
    else:
        problem, check = f"the download broke off ({reason})", "run the command again"
    return DownloadError(f"Cannot download {name}: {problem}; {check}.")


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


# --------------------------------------------------------------------------- import / remove


def check_architecture(entry: Entry, path: Path) -> None:
    """Raise ``CheckpointError`` unless ``path`` loads strictly into ``entry``'s architecture.

    Loading goes through ``checkpoints.read_state_dict`` (``weights_only``: pickled code is
    refused, never run).
    """
    from sam_deblur_cli.checkpoints import load_strict, read_state_dict

    state = read_state_dict(path)
    skeleton = _skeleton(entry)
    with warnings.catch_warnings():
        # Loading into meta parameters is the point (shapes only); torch warns once per key.
        warnings.filterwarnings("ignore", message=".*non-meta parameter.*meta parameter")
        load_strict(skeleton, state)


def _skeleton(entry: Entry) -> torch.nn.Module:
    import torch

    if entry.kind == "sam":
        from segment_anything import sam_model_registry

        if entry.arch not in sam_model_registry:
            known = ", ".join(sorted(sam_model_registry))
            raise UsageError(
                f"{entry.name} names SAM architecture {entry.arch!r}, which "
                f"segment_anything does not know; use one of {known}."
            )
        # Shapes are all a strict load checks: on the meta device ViT-H costs no memory.
        with torch.device("meta"):
            module: torch.nn.Module = sam_model_registry[entry.arch](checkpoint=None)
        return module
    from sam_deblur_cli.nets import build_network

    return build_network(entry.net_config())


def _copy_hashing(src: Path, fout: BinaryIO, progress: ProgressCallback | None, label: str) -> str:
    """Copy ``src`` into the open file ``fout`` and return the sha256 of the bytes written."""
    digest = hashlib.sha256()
    total = src.stat().st_size
    done = 0
    with src.open("rb") as fin:
        while chunk := fin.read(_CHUNK):
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
    entry's architecture; its sha256 is recorded. The user's file is only read.
    """
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
            check_architecture(entry, tmp)  # the copy, so what was checked is what is kept
        except CheckpointError as exc:
            detail = str(exc).replace(str(tmp), str(src))
            raise CheckpointError(f"{src} cannot be imported as {entry.name}: {detail}") from exc
    _record_import(entry, src, dest, actual)
    return dest


def _record_import(entry: Entry, src: Path, dest: Path, sha256: str) -> None:
    index = _read_json(_imported_index())
    old = index.get(entry.name)
    if isinstance(old, dict) and old.get("file") not in (None, dest.name):
        _discard(dest.parent / str(old["file"]))
    index[entry.name] = {
        "file": dest.name,
        "sha256": sha256,
        "size": dest.stat().st_size,
        "source": str(src.resolve()),
    }
    _write_json(_imported_index(), index)
    _remember(dest.resolve(), sha256)


def remove_weights(entry: Entry) -> list[Path]:
    """Delete every local copy of ``entry`` (imported and Hub cache); return what was removed."""
    removed: list[Path] = []
    imported = _imported_copy(entry)
    if imported is not None:
        _discard(imported)
        removed.append(imported)
    index = _read_json(_imported_index())
    if index.pop(entry.name, None) is not None:
        _write_json(_imported_index(), index)
    if isinstance(entry.source, HubSource):
        cached = _hub_cached(entry.source)
        if cached is not None:
            _discard(cached)
            removed.append(cached)
    return removed
