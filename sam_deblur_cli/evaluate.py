"""Paired-dataset evaluation: several models over one set of blurred/sharp pairs.

A dataset is either a root in the upstream layout (``input/`` blurred, ``target/`` sharp,
optional ``input_mask/`` segmask PNGs and ``grouped_masks/`` npz groups, all paired by file
stem) or two folders of blurred and sharp images. Every pair is read once and every
model runs on it in the same pass; models whose ``recipe_key`` is equal share one SAM
mask set per image, and dataset mask files, when used, are read once per image for all.

Metrics follow upstream.md 7 (see ``metrics``). By default the networks run as upstream
evaluated them: float32 with TF32 off, whole images (an image that does not fit is skipped,
never tiled unless asked), TLC as the model entry or ``tlc`` says, masks at each model's
mask value. The :class:`Protocol` actually used travels with the result into every report.
Problems with single inputs (a missing counterpart, a size mismatch, an unreadable image or
mask file, an image too large for the device) become ``Issue`` records and the run goes
on; only set-up problems raise.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sam_deblur_cli.datasets import Dataset, Issue, Pair, list_pairs
from sam_deblur_cli.errors import InputError, MaskError, NothingToDoError, UsageError

if TYPE_CHECKING:
    import numpy as np

    from sam_deblur_cli.imageio import Picture
    from sam_deblur_cli.masks import MaskResult
    from sam_deblur_cli.metrics import SsimVariant
    from sam_deblur_cli.pipeline import Deblurrer
    from sam_deblur_cli.weights import Manifest

logger = logging.getLogger(__name__)

MasksFrom = Literal["auto", "dataset", "sam"]

# progress(done, total, name): called after each pair, ``name`` being the pair just done.
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class ImageRow:
    """Metrics of one model on one pair; PSNR in dB (``inf`` when identical to sharp)."""

    name: str
    model: str
    psnr: float
    ssim: float
    psnr_input: float  # blurred input against sharp
    collapsed: bool  # lost more than 3 dB against the input


@dataclass(frozen=True)
class ModelSummary:
    """Means over the pairs a model was evaluated on (the paper's table row).

    ``psnr`` leaves identical outputs out (``identical`` counts them); ``mcr`` is a
    share in [0, 1]; means are NaN when ``count`` is 0.
    """

    model: str
    psnr: float
    ssim: float
    mcr: float
    count: int
    skipped: int
    identical: int
    tlc: bool | None  # None: not known (result built by hand)
    mask_value: str | None = None  # MAP models: "1/255" or "1"; None for the others


@dataclass(frozen=True)
class Protocol:
    """The settings of a run that move the numbers, as resolved (stated in every report).

    ``tile`` None: whole images; ``tf32`` only matters for fp32 on CUDA GPUs.
    """

    device: str = "cpu"
    precision: str = "fp32"
    tf32: bool = False
    tile: int | str | None = None

    @property
    def is_papers(self) -> bool:
        """Whether the networks ran as upstream evaluated them (fp32, no TF32, no tiling)."""
        return self.precision == "fp32" and not self.tf32 and self.tile is None

    def describe(self) -> str:
        tiling = "whole images" if self.tile is None else f"tiles {self.tile}"
        tf32 = "TF32 on" if self.tf32 else "TF32 off"
        return f"{self.precision}, {tf32}, {tiling}, on {self.device}"


@dataclass
class EvalResult:
    """Per-image rows, per-model summaries and every problem met, in dataset order."""

    models: list[str]
    pairs: int  # pairs considered (after --limit), complete or not
    rows: list[ImageRow] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)
    tlc: dict[str, bool] = field(default_factory=dict)  # whether each model ran with TLC
    masks_from: Literal["dataset", "sam"] | None = None  # None: no model takes masks
    ssim: SsimVariant = "3d"
    protocol: Protocol = field(default_factory=Protocol)
    mask_values: dict[str, float] = field(default_factory=dict)  # MAP models only

    @property
    def complete(self) -> bool:
        """True when every pair was evaluated by every model and every output saved."""
        return not self.issues

    def summaries(self) -> list[ModelSummary]:
        return [self._summary(model) for model in self.models]

    def _summary(self, model: str) -> ModelSummary:
        from sam_deblur_cli import metrics

        rows = [row for row in self.rows if row.model == model]
        ssims = [row.ssim for row in rows]
        return ModelSummary(
            model=model,
            psnr=metrics.mean_psnr(row.psnr for row in rows),
            ssim=math.fsum(ssims) / len(ssims) if ssims else math.nan,
            mcr=metrics.mode_collapse_rate((row.psnr_input, row.psnr) for row in rows),
            count=len(rows),
            skipped=self.pairs - len(rows),
            identical=sum(math.isinf(row.psnr) for row in rows),
            tlc=self.tlc.get(model),
            mask_value=self.mask_value_name(model),
        )

    def mask_value_name(self, model: str) -> str | None:
        """How ``model``'s masks were fed to its MAP unit ("1/255", "1"); None: no MAP unit."""
        from sam_deblur_cli.nets import format_mask_value

        value = self.mask_values.get(model)
        return None if value is None else format_mask_value(value)


@dataclass(frozen=True)
class EvalSettings:
    """What to run; the defaults are the paper's protocol.

    ``tlc`` None keeps each model's manifest default; ``tile`` None never tiles (an image
    that does not fit is skipped), "auto" or a size as in pipeline; ``mask_value`` overrides
    the MAP models' entry (1/255 or 1.0), to settle which convention a checkpoint learned.
    """

    models: tuple[str, ...] = ("segnafnet-gopro",)
    masks_from: MasksFrom = "auto"
    tlc: bool | None = None
    limit: int | None = None
    save_dir: Path | None = None
    ssim: SsimVariant = "3d"
    device: str = "auto"
    precision: str = "fp32"
    tile: int | str | None = None
    tf32: bool = False
    mask_value: float | None = None
    fast_masks: bool = True
    offline: bool = False


def resolve_protocol(settings: EvalSettings) -> Protocol:
    """The device, precision, TF32 and tiling a run of ``settings`` uses (no model loaded)."""
    from sam_deblur_cli.devices import resolve
    from sam_deblur_cli.pipeline import normalize_tile

    placement = resolve(settings.device, settings.precision)
    return Protocol(
        device=placement.device,
        precision=placement.precision,
        tf32=settings.tf32,
        tile=normalize_tile(settings.tile),
    )


def evaluate(
    dataset: Dataset,
    settings: EvalSettings,
    *,
    manifest: Manifest | None = None,
    progress: Progress | None = None,
) -> EvalResult:
    """Run every model of ``settings`` on every pair of ``dataset`` and measure it.

    Raises UsageError for bad settings, NothingToDoError (before any model loads) for a
    dataset without images, and lets set-up errors of the models (missing
    weights, unavailable device) through; per-input problems end up in ``issues``.
    """
    masks_from = _check_settings(settings, dataset)
    protocol = resolve_protocol(settings)
    pairs, issues = list_pairs(dataset)
    if not pairs:
        raise NothingToDoError(
            f"{dataset.blurred} holds no images to evaluate; put the blurred images there and "
            f"the sharp ones, with the same names, in {dataset.sharp}."
        )
    if settings.limit is not None:
        pairs = pairs[: settings.limit]
    models = _load_models(settings, protocol, manifest)
    tlc = {name: bool(model.tlc) for name, model in models.items()}
    mask_values = {
        name: value for name, model in models.items() if (value := model.mask_value) is not None
    }
    used = masks_from if any(model.needs_masks for model in models.values()) else None
    result = EvalResult(
        list(models),
        len(pairs),
        issues=issues,
        tlc=tlc,
        masks_from=used,
        ssim=settings.ssim,
        protocol=protocol,
        mask_values=mask_values,
    )
    runner = _PairRunner(models, settings, use_dataset_masks=masks_from == "dataset")
    for done, pair in enumerate(pairs, start=1):
        rows, pair_issues = runner.run(pair)
        result.rows += rows
        result.issues += pair_issues
        for issue in pair_issues:
            logger.info("%s (%s): %s", issue.name, issue.model or "all models", issue.reason)
        if progress is not None:
            progress(done, len(pairs), pair.name)
    return result


class _PairRunner:
    """Evaluates one pair with every model, sharing masks and the decoded images."""

    def __init__(
        self, models: dict[str, Deblurrer], settings: EvalSettings, *, use_dataset_masks: bool
    ) -> None:
        self.models = models
        self.settings = settings
        self.use_dataset_masks = use_dataset_masks

    def run(self, pair: Pair) -> tuple[list[ImageRow], list[Issue]]:
        from sam_deblur_cli import metrics

        try:
            blurred, sharp = self._read(pair)
        except InputError as exc:
            return [], [Issue(pair.name, None, str(exc))]
        blurred_u8 = metrics.to_uint8(blurred.rgb)
        sharp_u8 = metrics.to_uint8(sharp.rgb)
        psnr_input = metrics.psnr(blurred_u8, sharp_u8)
        masks: dict[str, MaskResult | InputError] = {}
        rows: list[ImageRow] = []
        issues: list[Issue] = []
        for name, model in self.models.items():
            try:
                guide = self._masks(model, pair, blurred_u8, masks) if model.needs_masks else None
                restored = metrics.to_uint8(model.deblur(blurred.rgb, guide))
            except InputError as exc:
                issues.append(Issue(pair.name, name, str(exc)))
                continue
            psnr = metrics.psnr(restored, sharp_u8)
            ssim = metrics.ssim(restored, sharp_u8, self.settings.ssim)
            collapsed = metrics.is_collapsed(psnr_input, psnr)
            rows.append(ImageRow(pair.name, name, psnr, ssim, psnr_input, collapsed))
            if self.settings.save_dir is not None:
                issues += self._save(pair.name, name, blurred, restored)
        return rows, issues

    def _read(self, pair: Pair) -> tuple[Picture, Picture]:
        from sam_deblur_cli.imageio import read_image

        if pair.blurred is None or pair.sharp is None:
            side = "sharp" if pair.sharp is None else "blurred"
            raise InputError(f"No {side} image named {pair.name}.*; add it or remove its partner.")
        blurred, sharp = read_image(pair.blurred), read_image(pair.sharp)
        if blurred.rgb.shape != sharp.rgb.shape:
            size_b, size_s = _size(blurred.rgb), _size(sharp.rgb)
            raise InputError(
                f"Blurred image is {size_b} but sharp image is {size_s}; pairs must match in size."
            )
        return blurred, sharp

    def _masks(
        self,
        model: Deblurrer,
        pair: Pair,
        rgb_u8: np.ndarray,
        cache: dict[str, MaskResult | InputError],
    ) -> MaskResult:
        """Masks for ``model`` on this pair, made or read once per recipe (or guide kind).

        A failure is cached too, so models sharing the masks report it without retrying.
        """
        # A CAT model refuses a groups .npz that a MAP model accepts, so file masks are
        # shared per guide kind; generated masks are shared by recipe.
        key = f"file:{model.guide_kind}" if self.use_dataset_masks else model.recipe_key
        if key not in cache:
            try:
                cache[key] = self._make_masks(model, pair, rgb_u8)
            except InputError as exc:
                cache[key] = exc
        found = cache[key]
        if isinstance(found, InputError):
            raise found
        return found

    def _make_masks(self, model: Deblurrer, pair: Pair, rgb_u8: np.ndarray) -> MaskResult:
        if not self.use_dataset_masks:
            return model.compute_masks(rgb_u8)
        if pair.mask is None:
            raise MaskError(
                f"No mask file for {pair.name} in the dataset; add one or use --masks-from sam."
            )
        height, width = rgb_u8.shape[:2]
        return model.load_masks(pair.mask, (height, width))

    def _save(self, name: str, model: str, source: Picture, restored: np.ndarray) -> list[Issue]:
        """Write the measured uint8 pixels as SAVE_DIR/MODEL/NAME.png; a failure is an issue."""
        from sam_deblur_cli.imageio import picture_with, write_image

        assert self.settings.save_dir is not None
        target = self.settings.save_dir / model / f"{name}.png"
        try:
            write_image(target, picture_with(restored / 255.0, source), format="png")
        except InputError as exc:
            return [Issue(name, model, str(exc))]
        return []


def write_csv(result: EvalResult, path: Path) -> None:
    """Per-image rows as CSV (name, model, psnr, ssim, psnr_input, collapsed), each followed
    by the protocol it was measured under (tlc, mask_value, precision, tf32, tile,
    masks_from, ssim); ``inf`` kept, empty cells for what does not apply."""
    fields = ["name", "model", "psnr", "ssim", "psnr_input", "collapsed", *_PROTOCOL_COLUMNS]

    def write(handle: Any) -> None:
        writer = csv.DictWriter(handle, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        for row in result.rows:
            writer.writerow({**asdict(row), **_protocol_columns(result, row.model)})

    _write_text(path, write)


def report_record(result: EvalResult) -> dict[str, Any]:
    """Summaries, per-image rows and issues as one JSON-able dict; non-finite numbers are None.

    Keys: settings, protocol, models, images, issues (what :func:`write_json` writes).
    """
    return {
        "settings": {"ssim": result.ssim, "masks_from": result.masks_from},
        "protocol": {**asdict(result.protocol), "papers": result.protocol.is_papers},
        "models": [_finite(asdict(s)) for s in result.summaries()],
        "images": [_finite(asdict(row)) for row in result.rows],
        "issues": [asdict(issue) for issue in result.issues],
    }


def write_json(result: EvalResult, path: Path) -> None:
    """Summaries, per-image rows and issues as JSON; non-finite numbers become null."""
    record = report_record(result)

    def write(handle: Any) -> None:
        json.dump(record, handle, indent=2, allow_nan=False)
        handle.write("\n")

    _write_text(path, write)


_PROTOCOL_COLUMNS = ("tlc", "mask_value", "precision", "tf32", "tile", "masks_from", "ssim_variant")


def _protocol_columns(result: EvalResult, model: str) -> dict[str, Any]:
    protocol = result.protocol
    return {
        "tlc": result.tlc.get(model, ""),
        "mask_value": result.mask_value_name(model) or "",
        "precision": protocol.precision,
        "tf32": protocol.tf32,
        "tile": protocol.tile or "",
        "masks_from": result.masks_from or "",
        "ssim_variant": result.ssim,
    }


def check_writable(path: Path, *, folder: bool = False) -> None:
    """Refuse, before a long run rather than after it, a report file (or, with ``folder``,
    an output folder) that cannot be written; creates the missing folders."""
    where = path if folder else path.parent
    if not folder and path.is_dir():
        raise UsageError(f"{path} is a folder; pass a file name for the report.")
    try:
        where.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=where):
            pass
    except OSError as exc:
        raise UsageError(
            f"Cannot write into {where} ({exc.strerror}); choose another path."
        ) from exc


def _check_settings(settings: EvalSettings, dataset: Dataset) -> Literal["dataset", "sam"]:
    """Refuse unusable settings; return where masks come from ("auto" resolved: the
    dataset's files when it has a mask folder, else SAM)."""
    if not settings.models:
        raise UsageError("No model to evaluate; pass at least one --model NAME.")
    twice = sorted({m for m in settings.models if settings.models.count(m) > 1})
    if twice:
        raise UsageError(f"Model {', '.join(twice)} is given more than once; pass each once.")
    if settings.limit is not None and settings.limit < 1:
        raise UsageError("--limit must be at least 1.")
    if settings.save_dir is not None:
        check_writable(settings.save_dir, folder=True)
    if settings.masks_from == "dataset" and not dataset.has_masks:
        raise UsageError(
            "The dataset has no input_mask/ or grouped_masks/ folder; use --masks-from sam."
        )
    if settings.masks_from == "auto":
        return "dataset" if dataset.has_masks else "sam"
    return settings.masks_from


def _load_models(
    settings: EvalSettings, protocol: Protocol, manifest: Manifest | None
) -> dict[str, Deblurrer]:
    """One Deblurrer per model, all run under ``protocol``. SAM is built lazily, on the first
    image that needs it, and only by the first model of each recipe (the one whose masks
    the others reuse). A mask value override reaches the MAP models only."""
    from sam_deblur_cli import weights
    from sam_deblur_cli.amg import RecipeOverrides
    from sam_deblur_cli.pipeline import Deblurrer, DeblurSettings

    manifest = manifest if manifest is not None else weights.load_manifest()
    is_map = {name: manifest.get(name).net_config().variant == "map" for name in settings.models}
    if settings.mask_value is not None and not any(is_map.values()):
        raise UsageError("A mask value applies to MAP models only and none is evaluated; drop it.")
    models: dict[str, Deblurrer] = {}
    for name in settings.models:
        deblur_settings = DeblurSettings(
            recipe=RecipeOverrides(model=name, fast_masks=settings.fast_masks),
            device=protocol.device,
            precision=protocol.precision,
            tile=protocol.tile,
            tlc=settings.tlc,
            offline=settings.offline,
            mask_value=settings.mask_value if is_map[name] else None,
            tf32=protocol.tf32,
            tile_on_oom=protocol.tile is not None,
        )
        models[name] = Deblurrer(deblur_settings, manifest=manifest, load_sam=False)
    return models


def _size(rgb: np.ndarray) -> str:
    return f"{rgb.shape[1]} x {rgb.shape[0]}"


def _finite(record: dict[str, Any]) -> dict[str, Any]:
    return {
        k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()
    }


def _write_text(path: Path, write: Callable[[Any], None]) -> None:
    """Write a text file atomically (``files.atomic_text_file``); its folder is created."""
    from sam_deblur_cli.files import atomic_text_file

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_text_file(path, newline="") as handle:
            write(handle)
    except OSError as exc:
        raise UsageError(f"Could not write {path} ({exc.strerror}); choose another path.") from exc
