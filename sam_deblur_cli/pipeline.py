"""Image -> masks -> network -> output, for one array and one file.

Data contracts:
- arrays are H x W x 3 RGB, either uint8 [0, 255] or float32 [0, 1]; results are float32
  [0, 1] (``Deblurrer.deblur``);
- SAM always sees uint8 RGB; the recipe of the model entry decides the channel order it
  is fed (masks/sam.py applies it);
- a *record* (:class:`Record`) is a JSON-able dict describing what happened to one input:
  the ``--json`` line of the command line, and what every engine returns per input.

Only what a run needs is loaded: a model without a mask guide never builds SAM, and a
run whose masks come from files builds it only if an image without a mask file shows up.
Heavy modules (torch, the networks, SAM) are imported inside the functions that use them.

Output names come from ``sam_deblur_cli.naming``; planning many inputs is
``sam_deblur_cli.batch.plan`` and running them ``sam_deblur_cli.batch.dispatch.run_jobs``,
one layer up.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypedDict, TypeVar, cast

from sam_deblur_cli.amg import RecipeOverrides
from sam_deblur_cli.errors import InputError, UsageError
from sam_deblur_cli.naming import default_output, overlay_path

if TYPE_CHECKING:
    import numpy as np

    from sam_deblur_cli.imageio import Picture
    from sam_deblur_cli.masks import MaskGenerator, MaskResult
    from sam_deblur_cli.nets import GuideKind, NetConfig
    from sam_deblur_cli.weights import Entry, Manifest

__all__ = [
    "STAGES",
    "DeblurSettings",
    "Deblurrer",
    "FileOptions",
    "Record",
    "StageRunner",
    "as_float_rgb",
    "as_uint8_rgb",
    "deblur_array",
    "deblur_file",
    "normalize_tile",
]

logger = logging.getLogger(__name__)

STAGES = ("read", "masks", "deblur", "write")
Status = Literal["pending", "ok", "skipped", "failed"]


class _RecordFields(TypedDict):
    """The fields every record has, in the order ``--json`` prints them."""

    input: str
    output: str | None
    status: Status  # "pending" only before the run settles it
    error: str | None  # why it failed (or, for a video with kept frames, which frames)
    seconds: dict[str, float]  # per stage (STAGES; a video's: masks, deblur, write)
    masks: int | None  # SAM masks made (0 when read from a file); None: no masks
    groups: int | None  # mask groups fed to the network
    model: str
    device: str  # "auto" only in records settled before any model was loaded
    precision: str
    tile: int | Literal["auto"] | None
    tlc: bool | None  # None only before any model was loaded


class Record(_RecordFields, total=False):
    """What happened to one input: one ``--json`` line, one row of every engine's result.

    Photos that ran add ``width``/``height`` (and ``overlay``, the overlay file's path);
    videos add the rest (``kept_frames``: frames that failed and kept their input pixels).
    """

    width: int
    height: int
    overlay: str
    frames: int
    resumed_from: int  # frames a previous run had finished
    key_frames: int  # frames SAM ran on
    kept_frames: list[int]
    fps: float
    encoding: str
    notes: list[str]  # streams converted, colour tags not kept (one line each)


_T = TypeVar("_T")


class StageRunner(Protocol):
    """Runs one stage of :meth:`Deblurrer.deblur_into` (``stage``: "masks", "deblur" or
    "write"): returns what ``work()`` returns and raises what it raises. A batch scheduler
    decides the thread and the moment; the default runs it at once."""

    def __call__(self, stage: str, work: Callable[[], _T]) -> _T: ...


def run_now(stage: str, work: Callable[[], _T]) -> _T:
    """The default :class:`StageRunner`: the stage runs here and now."""
    return work()


@dataclass
class DeblurSettings:
    """Everything that decides how a run deblurs; the defaults reproduce the published model."""

    recipe: RecipeOverrides = field(default_factory=RecipeOverrides)  # model + mask departures
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    require_gpu: bool = False
    precision: str = "auto"  # auto | fp32 | fp16 | bf16 (fp32 on the CPU)
    tile: int | str | None = "auto"  # "auto", a tile size in pixels, or None / 0 for never
    tlc: bool | None = None  # None: the model entry's default
    offline: bool = False
    mask_value: float | None = None  # MAP only; None: the model entry's (upstream.md 4)
    tf32: bool | None = None  # TF32 in CUDA fp32; None: torch's default
    tile_on_oom: bool = True  # False: an image that does not fit fails instead of tiling


@dataclass(frozen=True)
class FileOptions:
    """How files are read and written (the same for every file of a run)."""

    format: str | None = None  # output format; None: the output path's extension decides
    quality: int = 95
    max_pixels: int | None = None  # None: imageio's default guard
    overwrite: bool = False
    overlay: bool = False  # also write the mask overlay next to each output

    def read_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``imageio.read_image`` (its own guard when max_pixels is None)."""
        return {} if self.max_pixels is None else {"max_pixels": self.max_pixels}


def normalize_tile(tile: int | str | None) -> int | Literal["auto"] | None:
    """``"auto"`` stays, ``None`` / ``0`` / ``"0"`` mean never, a positive number is a size."""
    if tile is None or tile == "auto":
        return None if tile is None else "auto"
    try:
        size = int(tile)
    except ValueError:
        raise UsageError(
            f"Unknown tile size {tile!r}; use auto, 0 (never tile) or a size."
        ) from None
    if size < 0:
        raise UsageError(f"Tile size {size} is negative; use auto, 0 (never tile) or a size.")
    return size or None


class Deblurrer:
    """One loaded model (and SAM, when it needs masks) that deblurs many images.

    ``load_sam=False`` defers building SAM until an image needs generated masks (runs whose
    masks come from files). ``share_sam_with``: loaded Deblurrers whose SAM this one uses
    (the first that makes the same masks on the same device) instead of loading its own.
    Weights are checked here, before any image is touched, so a missing file is a set-up
    error (exit 2) and not one failure per image.
    """

    def __init__(
        self,
        settings: DeblurSettings | None = None,
        *,
        manifest: Manifest | None = None,
        progress: Any = None,
        load_sam: bool = True,
        share_sam_with: Iterable[Deblurrer] = (),
    ) -> None:
        from sam_deblur_cli import weights
        from sam_deblur_cli.devices import resolve

        self.settings = settings = settings or DeblurSettings()
        self.tile = normalize_tile(settings.tile)
        self.manifest = manifest if manifest is not None else weights.load_manifest()
        self.entry: Entry = self.manifest.get(settings.recipe.model)
        self.placement = resolve(
            settings.device, settings.precision, require_gpu=settings.require_gpu
        )
        from sam_deblur_cli.masks.precision import check_sam_precision

        check_sam_precision(
            settings.recipe.sam_precision, self.placement.device
        )  # before any loading
        self.recipe = self._effective_recipe()
        self.tlc = self.entry.tlc if settings.tlc is None else settings.tlc
        self._generator: MaskGenerator | None = None
        self.stage_runner: StageRunner = run_now
        checkpoint = self._ensure_network(progress)
        # Whether masks are needed shows in the entry already: SAM's weights are found (or
        # their absence reported) before the network is built.
        masked = self.recipe is not None and self.entry.needs_masks
        if masked:
            self._generator = next(
                (o._generator for o in share_sam_with if self._same_masks(o) and o._generator),
                None,
            )
        if masked and load_sam and self._generator is None:
            self._ensure_sam(progress)
        self.net = self._load_network(checkpoint)
        self.needs_masks = self.guide_kind != "none"
        if self.needs_masks and load_sam and self._generator is None:
            self._mask_generator()

    @contextmanager
    def stages_run_by(self, runner: StageRunner) -> Iterator[None]:
        """Within the block, :meth:`deblur_into` hands its stages to ``runner`` (one batch
        scheduler at a time: a Deblurrer runs one run's images)."""
        previous, self.stage_runner = self.stage_runner, runner
        try:
            yield
        finally:
            self.stage_runner = previous

    def _ensure_network(self, progress: Any) -> Path:
        """The network's weights file; a page-hosted one that is missing names the Hub model
        that works at once too."""
        from sam_deblur_cli import weights
        from sam_deblur_cli.errors import WeightsNotFoundError
        from sam_deblur_cli.weights.store import with_alternative

        offline = self.settings.offline
        try:
            return weights.ensure_weights(self.entry, offline=offline, progress=progress)
        except WeightsNotFoundError as exc:
            if self.entry.on_hub or self.entry.kind != "deblur":
                raise
            raise with_alternative(exc, self.manifest) from None

    def _same_masks(self, other: Deblurrer) -> bool:
        """Whether ``other``'s mask generator makes exactly the masks this model needs."""
        return (
            other.needs_masks
            and other.recipe_key == self.recipe_key
            and other.placement.device == self.placement.device
            and other.manifest.get(other.recipe.sam) == self.manifest.get(self.recipe.sam)
        )

    @property
    def masks_beside_network(self) -> bool:
        """Whether SAM of the next input should run beside this network by default: on CUDA
        (its own stream), unless TF32 is set explicitly (process-wide, so one thread only).
        On the CPU both already use every core and side by side only contend."""
        return self.placement.device.startswith("cuda") and self.settings.tf32 is None

    @property
    def guide_kind(self) -> GuideKind:
        """``"none"`` (plain), ``"segmask"`` (CAT) or ``"labels"`` (MAP)."""
        return cast("GuideKind", self.net.guide_kind)

    @property
    def recipe_key(self) -> str:
        """Models with equal keys can share one MaskResult per image."""
        recipe = self.recipe
        if dataclasses.is_dataclass(recipe) and not isinstance(recipe, type):
            recipe = dataclasses.asdict(recipe)
        wanted = self.settings.recipe
        key = {"recipe": recipe, "fast": wanted.fast_masks}
        if wanted.sam_precision != "fp32":
            key["sam_precision"] = wanted.sam_precision
        return json.dumps(key, sort_keys=True)

    def _effective_recipe(self) -> Any:
        """The model entry's mask recipe with the settings' overrides applied (None: no masks)."""
        if self.entry.recipe is None:
            return None
        from sam_deblur_cli.masks.sam import override_recipe

        s = self.settings.recipe
        return override_recipe(
            self.entry.recipe, sam=s.sam, channel_order=s.channel_order, amg=s.amg
        )

    def departures(self) -> list[str]:
        """Sentences naming how this run's masks differ from those the model was trained on."""
        if self.entry.recipe is None:
            return []
        from sam_deblur_cli.masks.precision import precision_departures
        from sam_deblur_cli.masks.sam import recipe_departures

        notes = recipe_departures(self.entry.recipe, self.recipe, model=self.entry.name)
        sam_precision = self.settings.recipe.sam_precision
        return notes + precision_departures(sam_precision, model=self.entry.name)

    @property
    def net_config(self) -> NetConfig:
        """The entry's network with this run's mask value (MAP only; UsageError otherwise)."""
        config = self.entry.net_config()
        if self.settings.mask_value is None:
            return config
        if config.variant != "map":
            raise UsageError(
                f"{self.entry.name} has no MAP unit, so a mask value does not apply; drop it."
            )
        return dataclasses.replace(config, mask_value=self.settings.mask_value)

    @property
    def mask_value(self) -> float | None:
        """The value MAP masks are fed at (None for models without a MAP unit)."""
        config = self.net_config
        return config.mask_value if config.variant == "map" else None

    def _load_network(self, checkpoint: Path) -> Any:
        from sam_deblur_cli.nets.tlc import set_tlc
        from sam_deblur_cli.weights import models

        net = models.load(self.entry, checkpoint, config=self.net_config)
        set_tlc(net, self.tlc)
        logger.info(
            "loaded %s (TLC %s) from %s", self.entry.name, "on" if self.tlc else "off", checkpoint
        )
        return net.to(self.placement.device)

    def _ensure_sam(self, progress: Any) -> None:
        """Check the recipe's SAM entry and fetch its weights now, before any image is read."""
        from sam_deblur_cli import weights

        entry = self.manifest.get(self.recipe.sam)
        if entry.kind != "sam":
            raise UsageError(
                f"{entry.name} is not a Segment Anything model; pick a SAM entry for --sam "
                "(see `sam-deblur weights list`)."
            )
        weights.ensure_weights(entry, offline=self.settings.offline, progress=progress)

    def _mask_generator(self) -> MaskGenerator:
        if self._generator is None:
            from sam_deblur_cli.masks import MaskGenerator

            self._generator = MaskGenerator(
                self.recipe.sam,
                self.recipe,
                manifest=self.manifest,
                device=self.placement.device,
                fast=self.settings.recipe.fast_masks,
                offline=self.settings.offline,
                sam_precision=self.settings.recipe.sam_precision,
            )
        return self._generator

    def compute_masks(self, rgb_uint8: np.ndarray) -> MaskResult:
        """SAM masks of an H x W x 3 uint8 RGB image, grouped as the model expects."""
        return self._mask_generator()(rgb_uint8)

    def deblur(self, rgb: np.ndarray, masks: MaskResult | None = None) -> np.ndarray:
        """Deblur H x W x 3 RGB (uint8 or float32 [0, 1]); returns float32 [0, 1].

        ``masks`` (ignored by plain models) defaults to SAM masks of ``rgb``.
        """
        from sam_deblur_cli.restore import restore

        image = as_float_rgb(rgb)
        guide = None
        if self.needs_masks:
            if masks is None:
                masks = self.compute_masks(as_uint8_rgb(rgb))
            guide = self._guide(masks)
        return restore(self.net, image, guide, **self._restore_options())

    def deblur_batch(
        self, rgbs: Sequence[np.ndarray], masks: Sequence[MaskResult | None] | None = None
    ) -> list[np.ndarray]:
        """Deblur same-size H x W x 3 RGB images (uint8 or float32 [0, 1]) as batches where
        memory allows (``restore.restore_batch``); returns float32 [0, 1] per image.

        ``masks``: one per image (a None entry, or no list: SAM masks of that image); ignored
        by plain models. The same values as :meth:`deblur` image by image, up to float
        rounding (below 1e-5).
        """
        from sam_deblur_cli.restore import restore_batch

        images = [as_float_rgb(rgb) for rgb in rgbs]
        guides: list[np.ndarray | None] | None = None
        if self.needs_masks:
            given = list(masks) if masks is not None else [None] * len(images)
            if len(given) != len(images):
                raise UsageError(f"{len(images)} images but {len(given)} masks; pass one each.")
            guides = [
                self._guide(m if m is not None else self.compute_masks(as_uint8_rgb(rgb)))
                for rgb, m in zip(rgbs, given, strict=True)
            ]
        return restore_batch(self.net, images, guides, **self._restore_options())

    def _restore_options(self) -> dict[str, Any]:
        """Where and how ``restore`` / ``restore_batch`` run this model."""
        p, s = self.placement, self.settings
        return {
            "device": p.device,
            "precision": p.precision,
            "tile": self.tile,
            "tile_on_oom": s.tile_on_oom,
            "tf32": s.tf32,
        }

    def _guide(self, masks: MaskResult) -> np.ndarray | None:
        """The network's guide from ``masks`` (restore checks it against the image)."""
        return masks.guide(self.guide_kind)

    def load_masks(self, masks_file: Path, shape: tuple[int, int]) -> MaskResult:
        """Masks from a segmask PNG or a groups .npz (MaskError if unusable for this image)."""
        from sam_deblur_cli.masks import load_mask_file

        result = load_mask_file(Path(masks_file), shape)
        self._guide(result)  # a CAT model cannot use groups: fail before deblurring
        return result

    def deblur_file(
        self,
        src: Path | str,
        dst: Path | str,
        *,
        masks_file: Path | str | None = None,
        options: FileOptions | None = None,
        picture: Picture | None = None,
    ) -> Record:
        """Deblur one file into ``dst`` (written atomically); returns its record.

        An existing ``dst`` is skipped unless ``options.overwrite``; ``dst`` is never ``src``.
        ``picture``: the already decoded ``src`` (batch prefetch). Raises InputError
        subclasses for this input's problems and SetupError for the run's.
        """
        src, dst, options = Path(src), Path(dst), options or FileOptions()
        record = self.new_record(src, dst)
        self.deblur_into(
            record, src, dst, Path(masks_file) if masks_file else None, options, picture
        )
        return record

    def deblur_into(
        self,
        record: Record,
        src: Path,
        dst: Path,
        masks_file: Path | None,
        options: FileOptions,
        picture: Picture | None,
    ) -> None:
        """deblur_file's work, filling ``record`` (from :meth:`new_record`) as it goes.

        The composition of the three stages :meth:`masks_for`, :meth:`restore_picture` and
        :meth:`write_restored`, each handed to ``self.stage_runner`` (which runs it at once,
        unless a batch scheduler decides where and when). Stage times survive a failure, so a
        runner that catches the error still reports them; ``picture`` is the decoded ``src``
        when the runner read it already (None: read here).
        """
        from sam_deblur_cli.imageio import read_image

        _check_output(src, dst)
        if dst.exists() and not options.overwrite:
            record["status"] = "skipped"
            return
        if picture is None:
            with _timer(record["seconds"], "read"):
                picture = read_image(src, **options.read_kwargs())
        run, decoded = self.stage_runner, picture
        masks = run("masks", lambda: self.masks_for(record, decoded, masks_file))
        restored = run("deblur", lambda: self.restore_picture(record, decoded, masks))
        run(
            "write",
            lambda: self.write_restored(record, src, dst, decoded, restored, masks, options),
        )

    def masks_for(
        self, record: Record, picture: Picture, masks_file: Path | None
    ) -> MaskResult | None:
        """Stage "masks": the masks ``picture`` is deblurred with (None for a model without
        masks): ``masks_file`` read, else SAM's; fills the record's seconds, masks, groups."""
        if not self.needs_masks:
            if masks_file is not None:
                raise UsageError(
                    f"{self.entry.name} takes no masks; drop --masks or pick a model that does."
                )
            return None
        with _timer(record["seconds"], "masks"):
            if masks_file is not None:
                masks = self.load_masks(masks_file, (picture.height, picture.width))
            else:
                masks = self.compute_masks(as_uint8_rgb(picture.rgb))
        record.update({"masks": masks.count, "groups": masks.groups})
        return masks

    def restore_picture(
        self, record: Record, picture: Picture, masks: MaskResult | None
    ) -> np.ndarray:
        """Stage "deblur": the network on ``picture.rgb`` with ``masks`` (from
        :meth:`masks_for`); H x W x 3 float32 [0, 1]; adds its seconds to the record."""
        with _timer(record["seconds"], "deblur"):
            return self.deblur(picture.rgb, masks)

    def write_restored(
        self,
        record: Record,
        src: Path,
        dst: Path,
        picture: Picture,
        restored: np.ndarray,
        masks: MaskResult | None,
        options: FileOptions,
    ) -> None:
        """Stage "write": ``restored`` (float32 [0, 1]) with ``picture``'s metadata into ``dst``
        atomically (and the overlay when asked); the record ends "ok" with the image size."""
        from sam_deblur_cli.imageio import picture_with, write_image

        with _timer(record["seconds"], "write"):
            written = picture_with(restored, picture)
            write_image(dst, written, format=options.format, quality=options.quality, protect=[src])
            if options.overlay and masks is not None:
                record["overlay"] = str(self._write_overlay(picture, masks, dst))
        record.update({"status": "ok", "width": picture.width, "height": picture.height})

    def _write_overlay(self, picture: Picture, masks: MaskResult, dst: Path) -> Path:
        from sam_deblur_cli.masks.formats import write_overlay_png

        path = overlay_path(dst)
        write_overlay_png(path, as_uint8_rgb(picture.rgb), masks)
        return path

    def new_record(self, src: Path, dst: Path | None) -> Record:
        """A record for ``src`` with this run's model, device and tile filled in."""
        record = blank_record(src, dst, self.settings)
        record.update(
            {
                "model": self.entry.name,
                "device": self.placement.device,
                "precision": self.placement.precision,
                "tile": self.tile,
                "tlc": self.tlc,
            }
        )
        return record


def blank_record(src: Path, dst: Path | None, settings: DeblurSettings) -> Record:
    """A record for ``src`` before any model is loaded (inputs settled by the checks that
    need none): the settings as given, so ``device`` may still read "auto" and ``tlc`` None."""
    return {
        "input": str(src),
        "output": None if dst is None else str(dst),
        "status": "pending",
        "error": None,
        "seconds": {},
        "masks": None,
        "groups": None,
        "model": settings.recipe.model,
        "device": settings.device,
        "precision": settings.precision,
        "tile": normalize_tile(settings.tile),
        "tlc": settings.tlc,
    }


def as_float_rgb(rgb: np.ndarray) -> np.ndarray:
    """H x W x 3 uint8 or float RGB -> float32 [0, 1] (floats are clipped)."""
    import numpy as np

    _check_rgb(rgb)
    if rgb.dtype == np.uint8:
        return rgb.astype(np.float32) / np.float32(255.0)
    if not np.issubdtype(rgb.dtype, np.floating):
        raise InputError(f"Expected uint8 or float RGB, got {rgb.dtype}; convert the array first.")
    return np.clip(rgb, 0.0, 1.0).astype(np.float32, copy=False)


def as_uint8_rgb(rgb: np.ndarray) -> np.ndarray:
    """H x W x 3 uint8 or float [0, 1] RGB -> uint8, rounded as image files are written."""
    import numpy as np

    from sam_deblur_cli.imageio import to_uint8

    _check_rgb(rgb)
    return rgb if rgb.dtype == np.uint8 else to_uint8(rgb)


def _check_rgb(rgb: np.ndarray) -> None:
    if getattr(rgb, "ndim", 0) != 3 or rgb.shape[2] != 3 or 0 in rgb.shape:
        shape = getattr(rgb, "shape", None)
        raise InputError(f"Expected an H x W x 3 RGB array, got shape {shape}; convert it first.")


def _check_output(src: Path, dst: Path) -> None:
    """An output is a file name and never the input (checked before an existing one is skipped)."""
    if dst.is_dir():
        raise UsageError(f"The output {dst} is a folder; give an output file name.")
    if dst.resolve() == src.resolve() or (dst.exists() and src.exists() and dst.samefile(src)):
        raise UsageError(f"The output {dst} is the input itself; choose another output path.")


class _timer:
    """Context manager adding the elapsed seconds of its block to ``seconds[stage]``."""

    def __init__(self, seconds: dict[str, float], stage: str) -> None:
        self.seconds, self.stage = seconds, stage

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        elapsed = time.perf_counter() - self.start
        self.seconds[self.stage] = round(self.seconds.get(self.stage, 0.0) + elapsed, 4)


# --------------------------------------------------------------------------- one-call API


def deblur_array(
    rgb: np.ndarray, settings: DeblurSettings | None = None, *, masks: MaskResult | None = None
) -> np.ndarray:
    """Deblur one H x W x 3 RGB array (uint8, or float in [0, 1]); same dtype comes back.

    Loads the model for this one call; use :class:`Deblurrer` for many images.
    """
    import numpy as np

    result = Deblurrer(settings, load_sam=masks is None).deblur(rgb, masks)
    return as_uint8_rgb(result) if rgb.dtype == np.uint8 else result


def deblur_file(
    src: Path | str,
    dst: Path | str | None = None,
    settings: DeblurSettings | None = None,
    *,
    masks_file: Path | str | None = None,
    options: FileOptions | None = None,
) -> Record:
    """Deblur one image file; ``dst`` defaults to ``<stem>_deblurred<ext>`` beside ``src``."""
    src = Path(src)
    dst = default_output(src, options.format if options else None) if dst is None else Path(dst)
    deblurrer = Deblurrer(settings, load_sam=masks_file is None)
    return deblurrer.deblur_file(src, dst, masks_file=masks_file, options=options)
