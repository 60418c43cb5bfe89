"""Model weights: the manifest, the cache, Hub downloads, sha256 checks, imports, loading.

- ``manifest``: weights.toml's schema, parsed and validated into :class:`Entry` records;
- ``paths``: where the cache and the local models' manifest live (a leaf);
- ``cache``: the imported copies' index, the verified-hash memory, sha256;
- ``hub``: downloads from the Hugging Face Hub (the only ``huggingface_hub`` importer);
- ``store``: an entry's local file: ``locate``, ``ensure_weights``, ``import_weights``...;
- ``models``: builds and strictly loads any entry's network (deblur or SAM); not imported
  here (``from sam_deblur_cli.weights import models``).

Importing this package stays cheap (no torch, no huggingface_hub); the names below are the
public API.
"""

from sam_deblur_cli.weights.cache import (
    ProgressCallback,
    expected_sha256,
    is_verified,
    sha256_file,
)
from sam_deblur_cli.weights.hub import DEFAULT_ENDPOINT, hub_endpoint
from sam_deblur_cli.weights.manifest import (
    ChannelOrder,
    Entry,
    HubSource,
    Kind,
    LocalSource,
    Manifest,
    PageSource,
    Recipe,
    load_manifest,
    manifest_path,
    tomllib,
)
from sam_deblur_cli.weights.paths import LIBRARY_NAME, cache_root, hub_cache_dir
from sam_deblur_cli.weights.store import (
    ensure_weights,
    import_weights,
    local_path,
    locate,
    remove_weights,
    verify,
)

__all__ = [
    "DEFAULT_ENDPOINT",
    "LIBRARY_NAME",
    "ChannelOrder",
    "Entry",
    "HubSource",
    "Kind",
    "LocalSource",
    "Manifest",
    "PageSource",
    "ProgressCallback",
    "Recipe",
    "cache_root",
    "ensure_weights",
    "expected_sha256",
    "hub_cache_dir",
    "hub_endpoint",
    "import_weights",
    "is_verified",
    "load_manifest",
    "local_path",
    "locate",
    "manifest_path",
    "remove_weights",
    "sha256_file",
    "tomllib",
    "verify",
]
