"""Read checkpoint files safely into a state dict and load them strictly.

``.pth`` files go through ``torch.load(weights_only=True, map_location="cpu")``, so a
pickle that carries code is refused before anything in it runs; ``.safetensors`` files
hold tensors only. torch is imported inside the functions: the CLI imports this module
at start-up. ``mmap=True`` maps a zip-format ``.pth`` instead of reading it (tensors are
copy-on-write views of the file's pages): for shape checks, which never touch the values.
Weights a model keeps are read into memory: mapped weights are file pages the kernel may
drop under memory pressure and fault back in from disk mid-run.
"""

from __future__ import annotations

import logging
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from sam_deblur_cli.errors import CheckpointError

if TYPE_CHECKING:
    from torch import Tensor, nn

logger = logging.getLogger(__name__)

# BasicSR wraps the state dict; "params" is what its test-time loader reads by default.
_WRAPPER_KEYS = ("params", "params_ema", "state_dict")
_STRIPPED_PREFIXES = ("module.",)  # left by DataParallel / DistributedDataParallel
_LISTED = 8  # keys named per kind in a mismatch report


def read_state_dict(path: str | Path, *, mmap: bool = False) -> dict[str, Tensor]:
    """Read ``path`` (``.pth``/``.pt``/``.ckpt`` or ``.safetensors``) into a flat state dict.

    ``mmap=True`` maps a zip-format ``.pth`` rather than reading it (see the module docstring).
    Accepts a BasicSR file (``{"params": sd}`` or ``{"params_ema": sd}``) or a bare state
    dict. Tensors land on the CPU with their stored dtype; keys pass through
    ``filter_keys``. Raises ``CheckpointError`` for unreadable, unsafe or odd files.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist; check the path or download it.")
    _refuse_non_checkpoint(path)
    raw = _read_safetensors(path) if path.suffix == ".safetensors" else _read_pickle(path, mmap)
    return filter_keys(_unwrap(raw, path))


# How a checkpoint starts: torch's zip container, a pickle (protocol 2+ opens with PROTO;
# torch's legacy format too), or a safetensors header (8-byte length, then JSON).
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = b"\x80"
_SNIFFED = 1024


def _refuse_non_checkpoint(path: Path) -> None:
    """One accurate sentence for files that are plainly no checkpoint: empty, a web page
    (what a browser saves from a share page), other text. Binary files pass to the readers."""
    try:
        with path.open("rb") as f:
            head = f.read(_SNIFFED)
    except OSError as exc:
        raise CheckpointError(
            f"Checkpoint {path} cannot be opened ({exc.strerror or exc}); check its permissions."
        ) from None
    if not head:
        raise CheckpointError(f"Checkpoint {path} is empty (0 bytes); download the file again.")
    if head.startswith(_ZIP_MAGIC) or head.startswith(_PICKLE_PROTO):
        return
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<?xml")) or b"<html" in text:
        raise CheckpointError(
            f"Checkpoint {path} is a web page (HTML), not a weights file: the browser saved "
            "the download page instead of the file; download the file itself (.pth or "
            ".safetensors) and use that."
        )
    if _is_text(head) and path.suffix != ".safetensors":
        raise CheckpointError(
            f"Checkpoint {path} is a text file, not a weights file; download the real "
            ".pth or .safetensors file."
        )


def _is_text(head: bytes) -> bool:
    try:
        decoded = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # not just a multi-byte character cut at the end
            return False
        decoded = head[: exc.start].decode("utf-8")
    return all(c.isprintable() or c in "\t\r\n" for c in decoded)


def _read_safetensors(path: Path) -> object:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"Checkpoint {path} is not a readable safetensors file ({exc}); download it again."
        ) from exc


def _read_pickle(path: Path, mmap: bool = False) -> object:
    import torch

    try:
        # torch warns about pickle protocols it did not write; our error says it all.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mapped = mmap and _is_zip(path)
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mapped)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"Checkpoint {path} contains pickled code, which is never run for safety; "
            "use a weights-only checkpoint (a state dict of tensors) or a .safetensors file."
        ) from exc
    # The file opened (sniffed above), so OSErrors too come from seeking in cut-off data.
    except (RuntimeError, EOFError, OSError) as exc:
        _refuse_other_zip(path)
        raise CheckpointError(
            f"Checkpoint {path} is truncated or damaged ({_first_line(exc)}); download it again."
        ) from exc
    # torch.load raises an open-ended set of types on bytes it cannot parse (KeyError on
    # text, ValueError...); the user only needs to know the file is no checkpoint.
    except Exception as exc:
        raise CheckpointError(
            f"Checkpoint {path} is not a PyTorch weights file ({_first_line(exc)}); "
            "download the real .pth or .safetensors file."
        ) from exc


def _refuse_other_zip(path: Path) -> None:
    """A whole zip archive that torch cannot read holds no checkpoint (torch.save puts a
    ``data.pkl`` in every one): say so instead of calling it truncated."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    # A damaged directory fails in open-ended ways (struct.error, UnicodeDecodeError, ...):
    # then the file is a damaged checkpoint, which the caller reports.
    except Exception:
        return
    if not any(name.endswith("data.pkl") for name in names):
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise CheckpointError(
            f"Checkpoint {path} is a zip archive without a PyTorch state dict (it holds "
            f"{shown or 'nothing'}); unzip it and use the .pth or .safetensors file inside."
        )


def _first_line(exc: BaseException) -> str:
    """The first sentence of an exception's text, or a phrase when it has none (EOFError)."""
    text = " ".join(str(exc).split())
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    return text.split(". ")[0].rstrip(".") if text else "the data ends early"


def _is_zip(path: Path) -> bool:
    """Whether ``path`` is in torch's zip format (the only one ``torch.load`` can map)."""
    try:
        with path.open("rb") as f:
            return f.read(4) == b"PK\x03\x04"
    except OSError:
        return False  # torch.load reports it


def _unwrap(raw: object, path: Path) -> dict[str, Tensor]:
    import torch

    if isinstance(raw, Mapping):
        for key in _WRAPPER_KEYS:
            if isinstance(raw.get(key), Mapping):
                logger.debug("Using the %r entry of %s", key, path)
                raw = raw[key]
                break
    if not isinstance(raw, Mapping) or not raw:
        raise CheckpointError(f"Checkpoint {path} holds no state dict; use a model checkpoint.")
    odd = [str(k) for k, v in raw.items() if not (isinstance(k, str) and torch.is_tensor(v))]
    if odd:
        raise CheckpointError(
            f"Checkpoint {path} has entries that are not named tensors ({_listing(odd)}); "
            "use a plain state-dict checkpoint."
        )
    return dict(raw)


def filter_keys(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The one place where checkpoint keys are renamed: strip wrapper prefixes like ``module.``."""
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        for prefix in _STRIPPED_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out


def load_strict(
    module: nn.Module, state_dict: Mapping[str, Tensor], *, assign: bool = False
) -> None:
    """Load ``state_dict`` into ``module`` with every key and shape matching, in place.

    ``assign=True`` makes the checkpoint's tensors the module's (for a module built on the
    meta device), cast to the module's dtypes and made contiguous as a copy would be.
    Raises ``CheckpointError`` naming the missing, unexpected and mis-shaped keys (with
    both shapes) instead of torch's long traceback.
    """
    expected = module.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    misshaped = [
        f"{k} (checkpoint {tuple(v.shape)}, network {tuple(expected[k].shape)})"
        for k, v in state_dict.items()
        if k in expected and v.shape != expected[k].shape
    ]
    problems = [
        f"{label}: {_listing(keys)}"
        for label, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("mis-shaped keys", misshaped),
        )
        if keys
    ]
    if problems:
        raise CheckpointError(
            f"The checkpoint does not fit this network ({'; '.join(problems)}); "
            "pick the model entry that matches the file."
        )
    if assign:
        import torch

        state_dict = {
            k: v.to(dtype=expected[k].dtype, memory_format=torch.contiguous_format)
            for k, v in state_dict.items()
        }
    module.load_state_dict(state_dict, strict=True, assign=assign)


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_LISTED])
    return f"{shown} and {len(keys) - _LISTED} more" if len(keys) > _LISTED else shown
