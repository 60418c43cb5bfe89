"""SAM-Deblur: Segment Anything masks guiding a NAFNet deblurring network.

The public API is re-exported here lazily (module ``__getattr__``), so
``import sam_deblur_cli`` stays instant and never imports torch::

    from sam_deblur_cli import Deblurrer, DeblurSettings, RecipeOverrides, deblur_array

    deblurrer = Deblurrer(DeblurSettings(recipe=RecipeOverrides(model="segnafnet-gopro")))
    sharp = deblurrer.deblur(rgb)  # H x W x 3 RGB, uint8 or float32 [0, 1] -> float32 [0, 1]
"""

from __future__ import annotations

import os
import sys
from importlib import import_module
from typing import TYPE_CHECKING, Any

from sam_deblur_cli._version import __version__

_THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def _advise_huge_pages() -> None:
    """Let torch back large CPU tensors with transparent huge pages (Linux, THP available).

    torch reads ``THP_MEM_ALLOC_ENABLE`` once, at its first CPU allocation, so this only
    takes effect when sam_deblur_cli is imported before torch (the command line always is);
    a value the user set is kept. Full-resolution feature maps are fresh allocations of
    hundreds of MB, and faulting them in 4 KB pages was most of the deblur time: 12 MP
    through the shallow SegNAFNet on 2 cores, 110 s -> 66 s, the same peak RSS.
    """
    if sys.platform != "linux" or "THP_MEM_ALLOC_ENABLE" in os.environ:
        return
    try:
        with open(_THP_SETTING) as f:
            setting = f.read()
    except OSError:  # a kernel without THP: torch's madvise would fail with a warning
        return
    if "[never]" not in setting:
        os.environ["THP_MEM_ALLOC_ENABLE"] = "1"


_advise_huge_pages()

if TYPE_CHECKING:
    from sam_deblur_cli.amg import RecipeOverrides
    from sam_deblur_cli.batch.dispatch import run_jobs
    from sam_deblur_cli.batch.local import run_batch
    from sam_deblur_cli.batch.plan import plan_batch
    from sam_deblur_cli.devices import Placement, resolve
    from sam_deblur_cli.errors import (
        DeviceError,
        ImageReadError,
        ImageWriteError,
        InputError,
        MaskError,
        NothingToDoError,
        SamDeblurError,
        SetupError,
        UsageError,
        WeightsError,
        WeightsNotFoundError,
    )
    from sam_deblur_cli.masks import MaskResult, load_mask_file
    from sam_deblur_cli.pipeline import (
        Deblurrer,
        DeblurSettings,
        FileOptions,
        deblur_array,
        deblur_file,
    )

# Public name -> the module that defines it.
_EXPORTS = {
    "RecipeOverrides": "sam_deblur_cli.amg",
    "DeblurSettings": "sam_deblur_cli.pipeline",
    "Deblurrer": "sam_deblur_cli.pipeline",
    "FileOptions": "sam_deblur_cli.pipeline",
    "deblur_array": "sam_deblur_cli.pipeline",
    "deblur_file": "sam_deblur_cli.pipeline",
    "plan_batch": "sam_deblur_cli.batch.plan",
    "run_batch": "sam_deblur_cli.batch.local",
    "run_jobs": "sam_deblur_cli.batch.dispatch",
    "MaskResult": "sam_deblur_cli.masks",
    "load_mask_file": "sam_deblur_cli.masks",
    "Placement": "sam_deblur_cli.devices",
    "resolve": "sam_deblur_cli.devices",
    **{
        name: "sam_deblur_cli.errors"
        for name in (
            "DeviceError",
            "ImageReadError",
            "ImageWriteError",
            "InputError",
            "MaskError",
            "NothingToDoError",
            "SamDeblurError",
            "SetupError",
            "UsageError",
            "WeightsError",
            "WeightsNotFoundError",
        )
    },
}

__all__ = [
    "DeblurSettings",
    "Deblurrer",
    "DeviceError",
    "FileOptions",
    "ImageReadError",
    "ImageWriteError",
    "InputError",
    "MaskError",
    "MaskResult",
    "NothingToDoError",
    "Placement",
    "RecipeOverrides",
    "SamDeblurError",
    "SetupError",
    "UsageError",
    "WeightsError",
    "WeightsNotFoundError",
    "__version__",
    "deblur_array",
    "deblur_file",
    "load_mask_file",
    "plan_batch",
    "resolve",
    "run_batch",
    "run_jobs",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sam_deblur_cli' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
