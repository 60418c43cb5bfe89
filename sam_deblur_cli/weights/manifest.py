"""The weights manifest (weights.toml): its schema, parsing and validation.

``load_manifest()`` reads ``manifest_path()`` (``$SAM_DEBLUR_WEIGHTS``, else the copy shipped
in the wheel) into a :class:`Manifest` of :class:`Entry` records, each with its source
(:class:`HubSource` at a pinned commit, or :class:`PageSource` for a file imported by hand),
its sha256 and, for deblur entries, the network (``nets.NetConfig``) and the mask
:class:`Recipe`. Every problem in the file is a ``SetupError`` naming the key to fix.

No torch here: ``nets`` is imported only for its config dataclass.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator, Mapping, Set
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sam_deblur_cli.amg import AMG_KEYS
from sam_deblur_cli.errors import SetupError, UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 needs the tomli backport
    import tomli as tomllib

if TYPE_CHECKING:
    from sam_deblur_cli.nets import NetConfig

_SHA256 = re.compile(r"[0-9a-f]{64}")
_COMMIT = re.compile(r"[0-9a-f]{40}")
_ARCH = re.compile(r"[a-z][a-z0-9_]*")

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
class LocalSource:
    """A file trained here (``sam-deblur train``), at an absolute path; user manifest only."""

    file: str


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
    source: HubSource | PageSource | LocalSource
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
    recipes: Mapping[str, Recipe] = field(default_factory=dict, hash=False)

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
    return Path(__file__).resolve().parents[2] / "weights.toml"


def load_manifest(path: str | Path | None = None, *, local: bool = True) -> Manifest:
    """Read and validate a manifest (default: ``manifest_path()``); with no ``path`` and
    ``local``, the user manifest of locally trained models (``weights.local``) is merged in
    after the packaged entries."""
    if path is None and local:
        from sam_deblur_cli.weights.paths import local_manifest_path

        return _merge_local(load_manifest(local=False), local_manifest_path())
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
    return Manifest(path=path, entries=entries, recipes=recipes)


def _merge_local(base: Manifest, path: Path) -> Manifest:
    """``base`` plus the entries of the user manifest at ``path`` (if it exists), which may
    use ``source = { local = PATH }`` and name ``base``'s recipes and SAM entries."""
    if not path.is_file():
        return base
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SetupError(
            f"Local models file {path} cannot be read ({exc}); fix or remove it."
        ) from exc
    _check_keys(path, "the top level", data, {"schema", "models"}, set())
    models = data.get("models", {})
    _check_keys(path, "models", models, set(models), set())
    entries = dict(base.entries)
    for name, raw in models.items():
        if name in entries:
            raise _invalid(path, f"models.{name}", "a packaged model has this name")
        entries[name] = _parse_entry(path, name, raw, base.recipes, local=True)
    return Manifest(path=base.path, entries=entries, recipes=base.recipes)


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


def _parse_entry(
    path: Path, name: str, raw: Any, recipes: Mapping[str, Recipe], *, local: bool = False
) -> Entry:
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
    source = _parse_source(path, f"{where}.source", raw["source"], local=local)
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


def _parse_source(
    path: Path, where: str, raw: Any, *, local: bool = False
) -> HubSource | PageSource | LocalSource:
    if local and isinstance(raw, dict) and "local" in raw:
        _check_keys(path, where, raw, {"local"}, {"local"})
        if not Path(str(raw["local"])).is_absolute():
            raise _invalid(path, f"{where}.local", "expected an absolute path")
        return LocalSource(file=str(raw["local"]))
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
