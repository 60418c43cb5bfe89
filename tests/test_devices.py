"""Device and precision resolution (devices.py).

This machine has no GPU: the CPU paths run for real; GPU presence is simulated by
replacing the three probes (CUDA count, bf16 support, MPS) that the module asks torch.
"""

from __future__ import annotations

import logging

import pytest

from sam_deblur_cli import devices
from sam_deblur_cli.devices import Placement, resolve, resolve_device, resolve_precision
from sam_deblur_cli.errors import DeviceError, SetupError, UsageError


def _fake_gpus(
    monkeypatch: pytest.MonkeyPatch, *, cuda: int = 0, bf16: bool = True, mps: bool = False
) -> None:
    monkeypatch.setattr(devices, "_cuda_count", lambda: cuda)
    monkeypatch.setattr(devices, "_cuda_bf16", lambda device: bf16)
    monkeypatch.setattr(devices, "_mps_available", lambda: mps)


def test_real_probes_agree_with_torch() -> None:
    import torch

    expected = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert devices._cuda_count() == expected


@pytest.mark.parametrize(("hardware", "level"), [(True, logging.WARNING), (False, logging.INFO)])
def test_auto_without_usable_gpu_falls_back_to_cpu_fp32_visibly(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, hardware: bool, level: int
) -> None:
    """A present-but-unusable NVIDIA GPU is a warning; a machine without one gets INFO."""
    _fake_gpus(monkeypatch)
    monkeypatch.setattr(devices, "_nvidia_hardware_present", lambda: hardware)
    with caplog.at_level(logging.INFO, logger="sam_deblur_cli.devices"):
        placement = resolve("auto", "auto")
    assert placement == Placement("cpu", "fp32", fell_back=True)
    assert not placement.is_gpu
    (record,) = [r for r in caplog.records if "CPU" in r.getMessage()]
    assert record.levelno == level
    assert ("torch" in record.getMessage()) is hardware


def test_require_gpu_without_gpu_is_a_setup_error(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_gpus(monkeypatch)
    with pytest.raises(DeviceError, match="--require-gpu") as info:
        resolve("auto", require_gpu=True)
    assert isinstance(info.value, SetupError) and info.value.exit_code == 2


def test_require_gpu_on_this_machine_for_real() -> None:
    import torch

    if torch.cuda.is_available() or devices._mps_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(DeviceError):
        resolve("auto", require_gpu=True)


def test_auto_prefers_cuda_then_mps(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_gpus(monkeypatch, cuda=2, mps=True)
    assert resolve("auto") == Placement("cuda:0", "bf16")
    _fake_gpus(monkeypatch, cuda=0, mps=True)
    assert resolve("auto") == Placement("mps", "fp16")


@pytest.mark.parametrize(
    ("requested", "expected"),
    [("cuda", "cuda:0"), ("cuda:1", "cuda:1"), (" CUDA:0 ", "cuda:0"), ("cpu", "cpu")],
)
def test_explicit_devices(monkeypatch: pytest.MonkeyPatch, requested: str, expected: str) -> None:
    _fake_gpus(monkeypatch, cuda=2)
    assert resolve_device(requested) == (expected, False)


def test_explicit_cuda_that_is_absent_is_refused_not_replaced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _fake_gpus(monkeypatch, cuda=0)
    with pytest.raises(DeviceError, match="--device auto"):
        resolve_device("cuda")
    _fake_gpus(monkeypatch, cuda=2)
    with pytest.raises(DeviceError, match="only 2 GPU"):
        resolve_device("cuda:2")
    with pytest.raises(DeviceError, match="MPS"):
        resolve_device("mps")


@pytest.mark.parametrize("bad", ["gpu", "cuda:", "cuda:x", "mps:0", "cpu:1", ""])
def test_malformed_devices_are_usage_errors(bad: str) -> None:
    with pytest.raises(UsageError):
        resolve_device(bad)


def test_cpu_with_require_gpu_is_contradictory() -> None:
    with pytest.raises(UsageError, match="contradicts"):
        resolve_device("cpu", require_gpu=True)


def test_precision_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_gpus(monkeypatch, cuda=1, bf16=False)
    assert resolve_precision("cpu", "auto") == "fp32"
    assert resolve_precision("cpu", "bf16") == "bf16"
    assert resolve_precision("cuda:0", "auto") == "fp16"  # no bf16 on this (simulated) GPU
    assert resolve_precision("cuda:0", "FP32") == "fp32"
    with pytest.raises(DeviceError, match="fp16 is not supported on the CPU"):
        resolve_precision("cpu", "fp16")
    with pytest.raises(DeviceError, match="bf16"):
        resolve_precision("cuda:0", "bf16")
    with pytest.raises(UsageError, match="precision"):
        resolve_precision("cpu", "fp8")


def test_bad_precision_is_reported_before_probing_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> int:
        raise AssertionError("device probed")

    monkeypatch.setattr(devices, "_cuda_count", boom)
    with pytest.raises(UsageError):
        resolve("auto", "half")
