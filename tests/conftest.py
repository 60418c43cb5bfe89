"""Shared fixtures. Tests never touch the internet; tiny real models are built at run time.

The fixtures of ``tiny_models`` (``tiny_checkpoints``, ``tiny_env_factory``, ``tiny_env``) and
``hub_server`` (``hub``, ``published``) are registered here as plugins, so test modules just
name them as parameters. These helper modules sit beside the tests and are imported as
top-level modules: pytest puts this folder on ``sys.path`` when it loads this conftest.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

pytest_plugins = ["tiny_models", "hub_server"]

# Never let a test reach the real Hub, whatever the developer's environment says.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture(autouse=True)
def _isolated_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every test gets its own weights cache and no manifest override from the environment."""
    home = tmp_path_factory.mktemp("sam-deblur-home")
    monkeypatch.setenv("SAM_DEBLUR_HOME", str(home))
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.delenv("SAM_DEBLUR_WEIGHTS", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv(
        "HF_ENDPOINT", "http://127.0.0.1:9"
    )  # unroutable: a stray download fails fast


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Tiny networks: one torch thread is as fast, and steady on a shared, busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
