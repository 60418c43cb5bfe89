"""Local models: networks trained here (``sam-deblur train``), in a user manifest.

The user manifest (``$SAM_DEBLUR_LOCAL_MODELS``, else ``cache_root()/local_models.toml``)
has weights.toml's schema; its entries have ``source = { local = "/abs/path/model.pth" }``
and may name the packaged recipes. ``manifest.load_manifest()`` merges it after the packaged
entries, so ``--model NAME`` finds a local model like any other and ``weights list`` shows
it as local. A local file is never deleted by a failed check: a changed file is refused
with advice instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sam_deblur_cli.errors import ChecksumError, UsageError, WeightsNotFoundError
from sam_deblur_cli.weights.paths import local_manifest_path

if TYPE_CHECKING:
    from sam_deblur_cli.nets import NetConfig
    from sam_deblur_cli.weights.manifest import Entry


@dataclass(frozen=True)
class LocalModel:
    """What a training run registers: the file, its architecture, mask recipe, TLC default."""

    name: str
    file: Path
    net: NetConfig
    recipe: str | None
    tlc: bool = False
    description: str = ""


def _read(path: Path) -> dict[str, Any]:
    from sam_deblur_cli.weights.manifest import tomllib

    if not path.is_file():
        return {"schema": 1, "models": {}}
    return tomllib.loads(path.read_text(encoding="utf-8"))


def add_local_model(model: LocalModel) -> Entry:
    """Hash ``model.file`` and write (or replace) its entry in the user manifest.

    Refuses (UsageError) a name the packaged manifest already uses. Returns the entry as
    ``load_manifest`` now reads it.
    """
    from sam_deblur_cli.files import write_text
    from sam_deblur_cli.nets import format_mask_value
    from sam_deblur_cli.weights.cache import remember, sha256_file
    from sam_deblur_cli.weights.manifest import load_manifest

    packaged = load_manifest(local=False)
    if model.name in packaged.entries:
        raise UsageError(f"{model.name} is a published model's name; pick another with --name.")
    file = model.file.resolve()
    sha256 = sha256_file(file)
    net: dict[str, Any] = {
        "variant": model.net.variant,
        "width": model.net.width,
        "enc_blk_nums": list(model.net.enc_blk_nums),
        "middle_blk_num": model.net.middle_blk_num,
        "dec_blk_nums": list(model.net.dec_blk_nums),
    }
    raw: dict[str, Any] = {
        "kind": "deblur",
        "description": model.description,
        "license": "local",
        "homepage": "",
        "sha256": sha256,
        "size": file.stat().st_size,
        "source": {"local": str(file)},
        "net": net,
        "tlc": model.tlc,
    }
    if model.net.variant == "map":
        net["seg_channel"] = model.net.seg_channel
        raw["mask_value"] = format_mask_value(model.net.mask_value)
    if model.recipe is not None:
        raw["recipe"] = model.recipe
    path = local_manifest_path()
    data = _read(path)
    data.setdefault("models", {})[model.name] = raw
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, dumps(data))
    remember(file, sha256)
    return load_manifest().get(model.name)


def remove_local_model(name: str) -> bool:
    """Drop ``name`` from the user manifest (its file stays); False if it was not there."""
    from sam_deblur_cli.files import write_text

    path = local_manifest_path()
    data = _read(path)
    if data.get("models", {}).pop(name, None) is None:
        return False
    write_text(path, dumps(data))
    return True


def local_file(entry: Entry) -> Path:
    """The file of a local entry, checked against its recorded sha256 (never deleted)."""
    from sam_deblur_cli.weights.cache import remember, remembered_sha256, sha256_file

    path = Path(entry.source.file)
    if not path.is_file():
        raise WeightsNotFoundError(
            f"{entry.name}'s file {path} is missing; restore it or train the model again."
        )
    if remembered_sha256(path) != entry.sha256:
        actual = sha256_file(path)
        if actual != entry.sha256:
            raise ChecksumError(
                f"{path} changed since {entry.name} was registered (sha256 {actual}, expected "
                f"{entry.sha256}); export it again with `sam-deblur train --resume RUN_DIR`."
            )
        remember(path, actual)
    return path


def dumps(data: dict[str, Any]) -> str:
    """TOML text of a manifest dict (tables of scalars, lists and inline tables only)."""
    lines = [
        "# Models trained here (sam-deblur train); merged with the packaged weights.toml.",
        f"schema = {int(data.get('schema', 1))}",
        "",
    ]
    for name, raw in data.get("models", {}).items():
        lines.append(f"[models.{_key(name)}]")
        lines += [f"{_key(k)} = {_value(v)}" for k, v in raw.items()]
        lines.append("")
    return "\n".join(lines)


def _key(key: str) -> str:
    bare = key.replace("-", "").replace("_", "").isalnum() and key.isascii()
    return key if bare else _value(key)


def _value(value: Any) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")
