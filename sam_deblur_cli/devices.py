"""Device and precision resolution: ``--device`` / ``--precision`` / ``--require-gpu``.

The answer is a plain :class:`Placement` of strings (``"cpu"``, ``"cuda:0"``, ``"mps"`` and
``"fp32"``, ``"fp16"``, ``"bf16"``) that ``restore.py`` and the mask generator accept.
torch is imported inside the functions, so the CLI can import this module at start-up.

Rules:
- ``auto`` picks CUDA, then MPS, then the CPU; with ``require_gpu`` no CPU fallback, a
  :class:`DeviceError` instead. The fallback is a warning when an NVIDIA GPU is present that
  this torch cannot use (the "GPU silently unused" trap: a CPU-only torch build or a broken
  driver) and an INFO line on machines that simply have no GPU.
- An explicitly named device that is not there (``cuda`` on a machine without CUDA,
  ``cuda:3`` with two GPUs) is a :class:`DeviceError`, never a silent fallback.
- Precision ``auto`` is fp32 on the CPU (half precision there is slow and lossy), bf16 on
  GPUs that support it and fp16 on the others. fp16 on the CPU and bf16 on a GPU without
  bf16 support are refused with a :class:`DeviceError`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sam_deblur_cli.errors import DeviceError, UsageError

logger = logging.getLogger(__name__)

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
PRECISION_CHOICES = ("auto", "fp32", "fp16", "bf16")

_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda)(?::(\d+))?$")


@dataclass(frozen=True)
class Placement:
    """Where and how a network runs: a torch device string and a precision name."""

    device: str
    precision: str
    fell_back: bool = False  # a GPU was wanted ("auto") but none was found

    @property
    def is_gpu(self) -> bool:
        return self.device != "cpu"


def resolve_device(requested: str = "auto", *, require_gpu: bool = False) -> tuple[str, bool]:
    """Turn a ``--device`` value into a torch device string; returns ``(device, fell_back)``.

    Raises UsageError for a malformed value and DeviceError for a device that is absent.
    """
    match = _DEVICE_RE.match(requested.strip().lower())
    if match is None:
        raise UsageError(
            f"Unknown device {requested!r}; use auto, cpu, cuda, cuda:N (N = GPU index) or mps."
        )
    kind, index = match.group(1), match.group(2)
    if index is not None and kind != "cuda":
        raise UsageError(f"Only CUDA devices take an index; use --device {kind}.")
    if kind == "cpu":
        if require_gpu:
            raise UsageError("--require-gpu contradicts --device cpu; drop one of them.")
        return "cpu", False
    if kind == "cuda":
        return _cuda_device(0 if index is None else int(index)), False
    if kind == "mps":
        if not _mps_available():
            raise DeviceError("Apple MPS is not available here; use --device auto or --device cpu.")
        return "mps", False
    return _auto_device(require_gpu)


def _auto_device(require_gpu: bool) -> tuple[str, bool]:
    if _cuda_count() > 0:
        return "cuda:0", False
    if _mps_available():
        return "mps", False
    if require_gpu:
        raise DeviceError(
            "No GPU found (neither CUDA nor Apple MPS) and --require-gpu was given; "
            "install a CUDA-enabled torch or drop --require-gpu to run on the CPU."
        )
    if _nvidia_hardware_present():
        logger.warning(
            "An NVIDIA GPU is present but torch %s cannot use it, so this runs on the CPU "
            "(much slower); install a CUDA build of torch (--require-gpu makes this an error).",
            _torch_version(),
        )
    else:
        logger.info(
            "No GPU found: running on the CPU, which is much slower (--require-gpu forbids this)."
        )
    return "cpu", True


def _nvidia_hardware_present() -> bool:
    """Whether the NVIDIA kernel driver is loaded, whatever torch thinks (Linux only)."""
    from pathlib import Path

    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidia0").exists()


def _torch_version() -> str:
    import torch

    return str(torch.__version__)


def _cuda_device(index: int) -> str:
    count = _cuda_count()
    if count == 0:
        raise DeviceError(
            "CUDA was requested but is not available (no NVIDIA GPU or a CPU-only torch); "
            "use --device auto or --device cpu."
        )
    if index >= count:
        raise DeviceError(
            f"CUDA device {index} was requested but only {count} GPU(s) exist; "
            f"use an index below {count}."
        )
    return f"cuda:{index}"


def resolve_precision(device: str, requested: str = "auto") -> str:
    """Pick the precision for ``device`` (a string from :func:`resolve_device`).

    Raises UsageError for a malformed value and DeviceError for a combination that the
    device cannot run.
    """
    value = requested.strip().lower()
    if value not in PRECISION_CHOICES:
        raise UsageError(f"Unknown precision {requested!r}; use one of auto, fp32, fp16, bf16.")
    kind = device.split(":", 1)[0]
    if value == "auto":
        if kind == "cpu":
            return "fp32"
        return "bf16" if kind == "cuda" and _cuda_bf16(device) else "fp16"
    if value == "fp16" and kind == "cpu":
        raise DeviceError("fp16 is not supported on the CPU; use --precision fp32 (or bf16).")
    if value == "bf16" and kind == "cuda" and not _cuda_bf16(device):
        raise DeviceError(f"{device} does not support bf16; use --precision fp16 or fp32.")
    return value


def resolve(
    device: str = "auto", precision: str = "auto", *, require_gpu: bool = False
) -> Placement:
    """Resolve ``--device``, ``--require-gpu`` and ``--precision`` together."""
    # Validate the precision spelling first: a typo should not cost a CUDA initialisation.
    if precision.strip().lower() not in PRECISION_CHOICES:
        raise UsageError(f"Unknown precision {precision!r}; use one of auto, fp32, fp16, bf16.")
    dev, fell_back = resolve_device(device, require_gpu=require_gpu)
    return Placement(dev, resolve_precision(dev, precision), fell_back)


@contextmanager
def tf32_mode(enabled: bool | None) -> Iterator[None]:
    """Allow (True) or forbid (False) TF32 in CUDA float32 convolutions and matmuls inside
    the block, restoring torch's settings after; None leaves them alone.

    cuDNN convolutions use TF32 by default on Ampere and newer GPUs: about 10 mantissa bits,
    so "fp32" results differ from a true float32 run. Upstream's numbers are true fp32.
    """
    if enabled is None:
        yield
        return
    import torch

    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    conv = getattr(cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        # torch >= 2.9: the fp32_precision API; mixing it with allow_tf32 is an error there
        saved = (conv.fp32_precision, matmul.fp32_precision)
        conv.fp32_precision = matmul.fp32_precision = "tf32" if enabled else "ieee"
        try:
            yield
        finally:
            conv.fp32_precision, matmul.fp32_precision = saved
        return
    legacy = (cudnn.allow_tf32, matmul.allow_tf32)
    cudnn.allow_tf32 = matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = legacy


def side_stream(device: str) -> Any:
    """A CUDA stream for work beside the default stream's (None off CUDA). It starts after
    the work queued so far on the device (the models' weights): make it once, before the
    work it should overlap is queued. Results read on the host (``.cpu()``) are complete."""
    if not device.startswith("cuda"):
        return None
    import torch

    stream = torch.cuda.Stream(device=device)
    stream.wait_stream(torch.cuda.current_stream(device))
    return stream


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _cuda_bf16(device: str) -> bool:
    import torch

    with torch.cuda.device(device):
        return bool(torch.cuda.is_bf16_supported())


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())
