"""Segment Anything as SAM-Deblur used it: safe loading, the recipe's channel order, generators.

- :func:`load_sam` builds the entry's architecture and loads the checkpoint through
  ``weights.models`` (``weights_only``, strict keys), never segment_anything's own
  ``torch.load``.
- :func:`to_sam_input` applies the recipe's channel order: the published checkpoints were
  trained on masks of images handed to SAM in BGR order (upstream.md 5.2).
- :func:`make_generator` returns the fast generator or segment-anything's stock one
  (``stock.StockMaskGenerator``, also the fast generator's fallback); both map an
  H x W x 3 uint8 image to a :class:`MaskSet` in generator order.
- :func:`override_recipe` / :func:`recipe_departures` apply user overrides and describe,
  in sentences, how a run's masks differ from those the model was trained on.

The generator parameters, their types and defaults are ``amg``'s table.

torch and segment_anything are imported inside the functions that need them.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, cast

import numpy as np

from sam_deblur_cli.amg import AMG_DEFAULTS, amg_params, effective_amg
from sam_deblur_cli.errors import UsageError
from sam_deblur_cli.masks.maskset import MaskSet
from sam_deblur_cli.masks.stock import StockMaskGenerator

if TYPE_CHECKING:
    from segment_anything.modeling import Sam

    from sam_deblur_cli.weights import Entry, Recipe

logger = logging.getLogger(__name__)

CHANNEL_ORDERS = ("bgr", "rgb")

MaskSetGenerator = Callable[[np.ndarray], MaskSet]


class RecipeLike(Protocol):
    """What a mask recipe says (``weights.Recipe`` has these fields)."""

    @property
    def sam(self) -> str: ...

    @property
    def channel_order(self) -> str: ...

    @property
    def amg(self) -> Mapping[str, float | int]: ...


# --- recipe ----------------------------------------------------------------------------


def override_recipe(
    recipe: Recipe,
    *,
    sam: str | None = None,
    channel_order: str | None = None,
    amg: Mapping[str, float | int] | None = None,
) -> Recipe:
    """A copy of ``recipe`` (``weights.Recipe``) with the given overrides; None keeps a field."""
    changes: dict[str, Any] = {}
    if sam is not None:
        changes["sam"] = sam
    if channel_order is not None:
        order = channel_order.lower()
        if order not in CHANNEL_ORDERS:
            raise UsageError(f"Unknown channel order {channel_order!r}; use bgr or rgb.")
        changes["channel_order"] = order
    if amg:
        effective_amg(amg)  # reject unknown names before anything runs
        changes["amg"] = {**recipe.amg, **amg}
    return dataclasses.replace(recipe, **changes) if changes else recipe


def recipe_departures(trained: RecipeLike, used: RecipeLike, *, model: str) -> list[str]:
    """Sentences naming every way ``used`` differs from the recipe ``model`` was trained with.

    Empty when the run follows the recipe. Parameters are compared after filling in the
    defaults, so spelling out a default is not a departure.
    """
    notes = []
    if used.sam != trained.sam:
        notes.append(
            f"Masks come from {used.sam}, but {model} was trained on masks from {trained.sam}."
        )
    if used.channel_order != trained.channel_order:
        notes.append(
            f"SAM sees the image in {used.channel_order.upper()} order, but {model} was "
            f"trained on masks of images fed in {trained.channel_order.upper()} order."
        )
    want, got = effective_amg(trained.amg), effective_amg(used.amg)
    for key in AMG_DEFAULTS:
        if got[key] != want[key]:
            notes.append(f"{key} is {got[key]}, but {model} was trained with {want[key]}.")
    return notes


# --- SAM -------------------------------------------------------------------------------


def to_sam_input(rgb_uint8: np.ndarray, channel_order: str) -> np.ndarray:
    """The H x W x 3 uint8 image SAM is given: the RGB image, or a BGR copy for ``"bgr"``."""
    if rgb_uint8.dtype != np.uint8 or rgb_uint8.ndim != 3 or rgb_uint8.shape[2] != 3:
        raise ValueError(f"expected H x W x 3 uint8 RGB, got {rgb_uint8.dtype} {rgb_uint8.shape}")
    if channel_order == "bgr":
        return np.ascontiguousarray(rgb_uint8[..., ::-1])
    if channel_order == "rgb":
        return rgb_uint8
    raise UsageError(f"Unknown channel order {channel_order!r}; use bgr or rgb.")


def load_sam(entry: Entry, *, device: str = "cpu", offline: bool = False) -> Sam:
    """The SAM of a manifest entry (``kind = "sam"``), weights loaded safely, in eval mode."""
    from sam_deblur_cli.weights import ensure_weights, models

    if entry.kind != "sam":
        raise UsageError(
            f"{entry.name} is not a Segment Anything model; pick a SAM entry for --sam "
            "(see `sam-deblur weights list`)."
        )
    models.sam_builder(entry)  # an architecture segment_anything lacks fails before a download
    path = ensure_weights(entry, offline=offline)
    model = cast("Sam", models.load(entry, path))
    logger.info("loaded %s (%s) from %s on %s", entry.name, entry.arch, path, device)
    return model.to(device).eval()


def entry_sha256(entry: Entry, *, offline: bool = False) -> str:
    """The sha256 of a SAM entry's weights: pinned, else recorded at import, else hashed."""
    from sam_deblur_cli.weights import ensure_weights, expected_sha256, sha256_file

    sha = str(expected_sha256(entry))
    if not sha:
        path = ensure_weights(entry, offline=offline)
        sha = str(expected_sha256(entry)) or str(sha256_file(path))
    return sha


def make_generator(sam: Sam, amg: Mapping[str, float | int], *, fast: bool) -> MaskSetGenerator:
    """A function from an H x W x 3 uint8 image (already in SAM's channel order) to masks."""
    params = amg_params(amg)
    if fast:
        from sam_deblur_cli.masks.fast import FastMaskGenerator

        return FastMaskGenerator(sam, params).generate
    return StockMaskGenerator(sam, params)


def generate(
    image_rgb_uint8: np.ndarray,
    sam_entry: Entry,
    recipe: RecipeLike,
    *,
    fast: bool = True,
    device: str = "cpu",
    offline: bool = False,
) -> MaskSet:
    """Masks of one RGB uint8 H x W x 3 image made the recipe's way (SAM loaded for this call).

    For many images, load SAM once: ``masks.MaskGenerator``.
    """
    model = load_sam(sam_entry, device=device, offline=offline)
    run = make_generator(model, recipe.amg, fast=fast)
    return run(to_sam_input(image_rgb_uint8, recipe.channel_order))
