"""Where the weights cache and the user's manifest of local models live (a leaf: no other
``weights`` module). Every path is computed on each call, so the environment variables
below take effect whenever they are set.

- ``$SAM_DEBLUR_HOME``: the cache root (else the platformdirs user cache for ``sam-deblur``);
- ``$SAM_DEBLUR_LOCAL_MODELS``: the local models' manifest (else ``local_models.toml`` in the
  cache root).
"""

from __future__ import annotations

import os
from pathlib import Path

LIBRARY_NAME = "sam-deblur"
LOCAL_FILE = "local_models.toml"


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


def local_manifest_path() -> Path:
    """``$SAM_DEBLUR_LOCAL_MODELS``, else ``local_models.toml`` in the weights cache root."""
    override = os.environ.get("SAM_DEBLUR_LOCAL_MODELS")
    return Path(override).expanduser() if override else cache_root() / LOCAL_FILE
