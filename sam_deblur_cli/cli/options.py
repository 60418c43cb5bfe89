"""The option vocabulary: every option that several commands take, declared once.

Each alias below is ``Annotated[type, typer.Option(...)]``; a command gives the default
(``device: Device = "auto"``), so one declaration can carry a per-command default (eval
runs fp32 and whole images by default, deblur picks for the device). Old spellings that
scripts may use stay as hidden options (``--stock``, ``--fast-masks``) or, for eval's
``--json PATH``, as an argument rewrite (:class:`EvalCommand`).

Options that always travel together are collected into frozen dataclasses
(:class:`OptionGroup`); a command taking a parameter of such a class gets the class's
fields on its command line and receives the filled-in object (:func:`takes_groups`).

``--json`` means one thing everywhere: machine-readable output, JSON records on stdout,
one per line, instead of the human text. Files are named by options of their own
(``eval --csv PATH --json-out PATH``).

Importing this module must stay cheap: no torch, no numpy.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import typing
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

import typer
from typer.core import TyperCommand

if TYPE_CHECKING:
    from sam_deblur_cli.amg import RecipeOverrides
    from sam_deblur_cli.batch.ray import RayOptions
    from sam_deblur_cli.serve.jobs import ServeSettings

MODEL_PANEL = "Model and masks"
RUN_PANEL = "Device and speed"
FILE_PANEL = "Files"
VIDEO_PANEL = "Video"
AMG_PANEL = "Mask generator overrides (departures from the model's recipe)"

DEFAULT_MODEL = "segnafnet-gopro"

# Spellings of options whose type or help differs between commands (one file or a folder,
# one model or several): the names are shared even where the declaration cannot be.
OUTPUT = ("--output", "-o")
FORMAT = ("--format", "-f")
MODEL = ("--model", "-m")
JSON = "--json"

# --------------------------------------------------------------------------- model and masks

Model = Annotated[
    str,
    typer.Option(
        *MODEL, help="Deblur model (see `sam-deblur weights list`).", rich_help_panel=MODEL_PANEL
    ),
]
Models = Annotated[
    list[str],
    typer.Option(
        *MODEL,
        help="Deblur model (see `sam-deblur weights list`); repeat for several.",
        rich_help_panel=MODEL_PANEL,
    ),
]
Sam = Annotated[
    str | None,
    typer.Option(
        "--sam",
        help="SAM entry to make masks with, instead of the recipe's.",
        rich_help_panel=MODEL_PANEL,
    ),
]
StockMasks = Annotated[
    bool,
    typer.Option(
        "--stock-masks",
        help="Use segment-anything's stock mask generator (slower).",
        rich_help_panel=MODEL_PANEL,
    ),
]
SamPrecision = Annotated[
    str,
    typer.Option(
        "--sam-precision",
        help="SAM's image encoder: fp32 (published), fp32-sdpa (fused attention, faster, "
        "masks may differ slightly), bf16 or fp16 (CUDA only); the models learned on fp32 "
        "masks.",
        rich_help_panel=MODEL_PANEL,
    ),
]
# Old spellings, kept working for scripts: `masks --stock`, `eval --fast-masks` (the default).
StockAlias = Annotated[bool, typer.Option("--stock", hidden=True)]
FastMasksAlias = Annotated[bool, typer.Option("--fast-masks", hidden=True)]
Tlc = Annotated[
    bool | None,
    typer.Option(
        "--tlc/--no-tlc",
        help="Test-time local converter (default: as the model entry says).",
        show_default=False,
        rich_help_panel=MODEL_PANEL,
    ),
]

# --------------------------------------------------------------------------- mask generator

PointsPerSide = Annotated[
    int | None,
    typer.Option(
        "--points-per-side", min=1, help="SAM point grid size.", rich_help_panel=AMG_PANEL
    ),
]
PredIou = Annotated[
    float | None,
    typer.Option(
        "--pred-iou-thresh", help="Keep masks above this predicted IoU.", rich_help_panel=AMG_PANEL
    ),
]
Stability = Annotated[
    float | None,
    typer.Option(
        "--stability-score-thresh",
        help="Keep masks above this stability.",
        rich_help_panel=AMG_PANEL,
    ),
]
ChannelOrder = Annotated[
    str | None,
    typer.Option(
        "--channel-order",
        help="Feed SAM rgb or bgr (the published models want bgr).",
        rich_help_panel=AMG_PANEL,
    ),
]

# --------------------------------------------------------------------------- device and speed

Device = Annotated[
    str,
    typer.Option(
        "--device", "-d", help="auto, cpu, cuda, cuda:N or mps.", rich_help_panel=RUN_PANEL
    ),
]
RequireGpu = Annotated[
    bool,
    typer.Option(
        "--require-gpu", help="Fail instead of falling back to the CPU.", rich_help_panel=RUN_PANEL
    ),
]
Precision = Annotated[
    str,
    typer.Option(
        "--precision",
        help="auto, fp32, fp16 or bf16 (auto: fp32 on the CPU).",
        rich_help_panel=RUN_PANEL,
    ),
]
Tile = Annotated[
    str,
    typer.Option(
        "--tile",
        help="auto (tile only if memory is short), a tile size, or 0 (never).",
        rich_help_panel=RUN_PANEL,
    ),
]
Offline = Annotated[
    bool,
    typer.Option(
        "--offline",
        help="Never download; use the weights cache only (as HF_HUB_OFFLINE=1).",
    ),
]

# --------------------------------------------------------------------------- files

Overlay = Annotated[
    bool,
    typer.Option(
        "--overlay",
        help="Also write the mask overlay (<output>_overlay.png); models that take masks only.",
        rich_help_panel=FILE_PANEL,
    ),
]
Overwrite = Annotated[
    bool,
    typer.Option(
        "--overwrite",
        help="Replace outputs that exist (default: skip them).",
        rich_help_panel=FILE_PANEL,
    ),
]
ImageFormat = Annotated[
    str | None,
    typer.Option(
        *FORMAT,
        help="Output format: jpg, png, tif, webp or bmp (default: the input's).",
        rich_help_panel=FILE_PANEL,
    ),
]
Quality = Annotated[
    int,
    typer.Option(
        "--quality", min=1, max=100, help="JPEG / WebP quality.", rich_help_panel=FILE_PANEL
    ),
]
MaxPixels = Annotated[
    int | None,
    typer.Option(
        "--max-pixels",
        min=1,
        help="Refuse larger images (default: a guard against decompression bombs).",
        rich_help_panel=FILE_PANEL,
    ),
]

# --------------------------------------------------------------------------- what is printed

Json = Annotated[
    bool, typer.Option(JSON, help="Machine-readable output: JSON records on stdout, one per line.")
]
Quiet = Annotated[
    bool, typer.Option("--quiet", "-q", help="Errors only on stderr (no progress or notes).")
]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Also log what happens (INFO).")]


# --------------------------------------------------------------------------- video

MaskEvery = Annotated[
    int,
    typer.Option(
        "--mask-every",
        min=1,
        help="Video: run SAM on every K-th frame; frames between reuse its masks.",
        rich_help_panel=VIDEO_PANEL,
    ),
]
SceneCut = Annotated[
    float,
    typer.Option(
        "--scene-cut",
        min=0.0,
        help="Video: new masks at a cut, where a frame's colours differ from the frame "
        "before's by more than this (histogram distance of thumbnails, 0-1; 0 = off).",
        rich_help_panel=VIDEO_PANEL,
    ),
]
BatchFrames = Annotated[
    str,
    typer.Option(
        "--batch-frames",
        help="Video: frames the network takes at once, or auto (on a GPU up to 8, as many as "
        "fit in memory; on the CPU 1); 1 gives each frame exactly its photo result.",
        rich_help_panel=VIDEO_PANEL,
    ),
]
KeepGoingFrames = Annotated[
    bool,
    typer.Option(
        "--keep-going-frames",
        help="Video: a frame that fails keeps its input pixels (and is reported) "
        "instead of stopping that video.",
        rich_help_panel=VIDEO_PANEL,
    ),
]
Codec = Annotated[
    str | None,
    typer.Option(
        "--codec",
        help="Video encoder: h264 (default; vp9 for .webm), hevc, vp9, av1, ffv1, libx264rgb.",
        rich_help_panel=VIDEO_PANEL,
    ),
]
Crf = Annotated[
    int | None,
    typer.Option(
        "--crf",
        min=0,
        help="Video quality (lower is better; h264 default 18).",
        rich_help_panel=VIDEO_PANEL,
    ),
]
Preset = Annotated[
    str | None,
    typer.Option(
        "--preset",
        help="Encoder speed preset (h264/hevc default medium).",
        rich_help_panel=VIDEO_PANEL,
    ),
]
PixFmt = Annotated[
    str | None,
    typer.Option(
        "--pix-fmt",
        help="Video pixel format (default yuv420p; yuv420p10le for 10-bit sources).",
        rich_help_panel=VIDEO_PANEL,
    ),
]

# --------------------------------------------------------------------------- option groups

R = TypeVar("R")


class OptionGroup:
    """Base of option groups: frozen dataclasses whose fields a command takes as options.

    Each field is annotated with an alias above (or is another group) and has a default.
    """


def _is_group(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, OptionGroup)


def _flatten(cls: type) -> list[inspect.Parameter]:
    """The command-line parameters of a group (nested groups included), keyword-only."""
    hints = typing.get_type_hints(cls, include_extras=True)
    params = []
    for item in dataclasses.fields(cls):
        annotation = hints[item.name]
        if _is_group(annotation):
            params += _flatten(annotation)
        else:
            params.append(
                inspect.Parameter(
                    item.name,
                    inspect.Parameter.KEYWORD_ONLY,
                    default=item.default,
                    annotation=annotation,
                )
            )
    return params


def _build(cls: type[Any], values: dict[str, Any]) -> Any:
    """The group ``cls`` from the flat option values (taken out of ``values``)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    kwargs = {
        item.name: _build(hints[item.name], values)
        if _is_group(hints[item.name])
        else values.pop(item.name)
        for item in dataclasses.fields(cls)
    }
    return cls(**kwargs)


def takes_groups(command: Callable[..., R]) -> Callable[..., R]:
    """Let ``command`` take option groups: Typer sees each group's fields as options, and
    ``command`` is called with the group objects built from them.

    Apply it below ``@app.command``. Option names must be unique across the groups.
    """
    hints = typing.get_type_hints(command, include_extras=True)
    params: list[inspect.Parameter] = []
    groups: dict[str, type] = {}
    for param in inspect.signature(command).parameters.values():
        annotation = hints.get(param.name, param.annotation)
        if _is_group(annotation):
            groups[param.name] = annotation
            params += _flatten(annotation)
        else:
            params.append(param.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=annotation))
    names = [param.name for param in params]
    if len(names) != len(set(names)):
        raise TypeError(f"{command.__name__}: an option name appears in two groups")

    @functools.wraps(command)
    def wrapper(**values: Any) -> R:
        for name, cls in groups.items():
            values[name] = _build(cls, values)
        return command(**values)

    wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {param.name: param.annotation for param in params}
    return wrapper


@dataclasses.dataclass(frozen=True)
class MaskRecipeOptions(OptionGroup):
    """The model whose mask recipe to follow, and the departures from it (masks, deblur): the
    command-line spelling of :class:`sam_deblur_cli.amg.RecipeOverrides`."""

    model: Model = DEFAULT_MODEL
    sam: Sam = None
    stock_masks: StockMasks = False
    stock: StockAlias = False
    sam_precision: SamPrecision = "fp32"
    channel_order: ChannelOrder = None
    points_per_side: PointsPerSide = None
    pred_iou_thresh: PredIou = None
    stability_score_thresh: Stability = None

    def overrides(self) -> RecipeOverrides:
        """The library's one recipe type: the model, and the generator parameters given on
        the command line; ``--stock-masks`` (or the old ``--stock``) picks the stock generator."""
        from sam_deblur_cli.amg import RecipeOverrides

        given = {
            "points_per_side": self.points_per_side,
            "pred_iou_thresh": self.pred_iou_thresh,
            "stability_score_thresh": self.stability_score_thresh,
        }
        return RecipeOverrides(
            model=self.model,
            sam=self.sam,
            amg={name: value for name, value in given.items() if value is not None},
            channel_order=self.channel_order,
            fast_masks=not (self.stock_masks or self.stock),
            sam_precision=self.sam_precision,
        )


@dataclasses.dataclass(frozen=True)
class OutputMode(OptionGroup):
    """What a command prints: JSON records or human text, and how much of the latter."""

    json: Json = False
    quiet: Quiet = False
    verbose: Verbose = False


@dataclasses.dataclass(frozen=True)
class VideoOptions(OptionGroup):
    """How videos are deblurred and encoded (deblur, batch)."""

    mask_every: MaskEvery = 1
    scene_cut: SceneCut = 0.12
    batch_frames: BatchFrames = "auto"
    keep_going_frames: KeepGoingFrames = False
    codec: Codec = None
    crf: Crf = None
    preset: Preset = None
    pix_fmt: PixFmt = None


# --------------------------------------------------------------------------- eval's old --json PATH


class EvalCommand(TyperCommand):
    """eval's command: ``--json PATH`` (before ``--json`` became the stdout flag) still
    names the report file; it is read as ``--json-out PATH``.

    The token after ``--json`` is the old report path when it is not an option and not an
    existing folder: such a command line meant that path before, and a folder never was a
    valid report path, so ``eval --json DATASET`` is the flag followed by the dataset.
    """

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, legacy_json_path(args))


def legacy_json_path(args: list[str]) -> list[str]:
    """``[..., "--json", "r.json", ...]`` -> ``[..., "--json-out", "r.json", ...]`` (see
    :class:`EvalCommand`); ``--json=r.json`` likewise. Nothing after ``--`` is touched."""
    out: list[str] = []
    rest = list(args)
    while rest:
        token = rest.pop(0)
        if token == "--":
            out += [token, *rest]
            break
        if token.startswith(f"{JSON}="):
            out.append("--json-out=" + token.split("=", 1)[1])
        elif token == JSON and rest and _is_report_path(rest[0]):
            out += ["--json-out", rest.pop(0)]
        else:
            out.append(token)
    return out


def _is_report_path(token: str) -> bool:
    return not token.startswith("-") and not Path(token).is_dir()


# --------------------------------------------------------------------------- eval


@dataclasses.dataclass(frozen=True)
class EvalOptions(OptionGroup):
    """eval's settings after ``--model``, in its help's order: where masks come from, the
    protocol (device, precision, tiling, TLC, mask value, SSIM), the report files."""

    masks_from: Annotated[
        Literal["auto", "dataset", "sam"],
        typer.Option(
            "--masks-from",
            help="Masks for SAM-guided models: the dataset's mask files, or SAM run once per "
            "image and recipe. auto: the dataset's when it has a mask folder.",
            rich_help_panel=MODEL_PANEL,
        ),
    ] = "auto"
    stock_masks: StockMasks = False
    fast_masks: FastMasksAlias = False  # the old spelling of the default
    tlc: Tlc = None
    mask_value: Annotated[
        str | None,
        typer.Option(
            "--mask-value",
            help="Feed MAP models masks of this value instead of their entry's: 1/255 (as "
            "upstream's loader) or 1. To check which convention a checkpoint learned.",
            show_default=False,
            rich_help_panel=MODEL_PANEL,
        ),
    ] = None
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Only the first N pairs.")] = (
        None
    )
    ssim: Annotated[
        Literal["3d", "classic"],
        typer.Option(
            "--ssim", help="3d: NAFNet's SSIM as in the paper; classic: per-channel 11x11."
        ),
    ] = "3d"
    device: Device = "auto"
    precision: Precision = "fp32"  # the paper's protocol
    tile: Tile = "0"  # whole images: one that does not fit is skipped
    tf32: Annotated[
        bool,
        typer.Option(
            "--tf32/--no-tf32",
            help="Allow TF32 in fp32 convolutions on CUDA GPUs (faster, not the paper's protocol).",
            rich_help_panel=RUN_PANEL,
        ),
    ] = False
    offline: Offline = False
    save: Annotated[
        Path | None,
        typer.Option(
            "--save",
            help="Save restored images as DIR/MODEL/NAME.png.",
            show_default=False,
            rich_help_panel=FILE_PANEL,
        ),
    ] = None
    csv_path: Annotated[
        Path | None,
        typer.Option(
            "--csv",
            help="Write per-image rows to this CSV file.",
            show_default=False,
            rich_help_panel=FILE_PANEL,
        ),
    ] = None
    json_path: Annotated[
        Path | None,
        typer.Option(
            "--json-out",
            help="Write summaries, per-image rows and issues to this JSON file.",
            show_default=False,
            rich_help_panel=FILE_PANEL,
        ),
    ] = None


# --------------------------------------------------------------------------- batch engines

ENGINE_PANEL = "Engine (where the batch runs)"

Engine = Annotated[
    str,
    typer.Option(
        "--engine",
        metavar="local|ray",
        # "\\[" keeps Rich from reading "[ray]" as markup.
        help="local (this process) or ray (a Ray cluster; pip install 'sam-deblur-cli\\[ray]').",
        rich_help_panel=ENGINE_PANEL,
    ),
]
RayAddress = Annotated[
    str | None,
    typer.Option(
        "--ray-address",
        help="auto (this node's cluster) or ray://HOST:PORT (default: a local Ray instance).",
        rich_help_panel=ENGINE_PANEL,
    ),
]
GpusPerWorker = Annotated[
    float | None,
    typer.Option(
        "--gpus-per-worker",
        min=0.0,
        help="GPUs reserved per Ray worker; fractions share a GPU (default: 1 if any, else 0).",
        show_default=False,
        rich_help_panel=ENGINE_PANEL,
    ),
]
RayWorkers = Annotated[
    str | None,
    typer.Option(
        "--workers",
        metavar="N|MIN-MAX",
        help="Ray workers: N, or MIN-MAX to autoscale (default: as many as fit).",
        rich_help_panel=ENGINE_PANEL,
    ),
]


@dataclasses.dataclass(frozen=True)
class EngineOptions(OptionGroup):
    """Which engine runs a batch, and the Ray engine's placement (``batch``)."""

    engine: Engine = "local"
    ray_address: RayAddress = None
    gpus_per_worker: GpusPerWorker = None
    workers: RayWorkers = None

    @property
    def uses_ray(self) -> bool:
        """True for ``--engine ray``; a UsageError for an unknown engine or Ray options
        given to the local engine."""
        from sam_deblur_cli.errors import UsageError

        if self.engine not in ("local", "ray"):
            raise UsageError(f"Unknown engine {self.engine!r}; use --engine local or ray.")
        given = [self.ray_address, self.gpus_per_worker, self.workers]
        if self.engine == "local" and any(value is not None for value in given):
            raise UsageError(
                "--ray-address, --gpus-per-worker and --workers apply to --engine ray; add it."
            )
        return self.engine == "ray"

    def ray_options(self) -> RayOptions | None:
        """The Ray engine's placement; None for the local engine (UsageErrors as above)."""
        if not self.uses_ray:
            return None
        from sam_deblur_cli.batch.ray import RayOptions, parse_workers

        return RayOptions(
            address=self.ray_address,
            workers=None if self.workers is None else parse_workers(self.workers),
            gpus_per_worker=self.gpus_per_worker,
        )


# --------------------------------------------------------------------------- serve

SERVE_PANEL = "Server"

Host = Annotated[
    str,
    typer.Option(
        "--host", help="Address to bind (0.0.0.0: every network).", rich_help_panel=SERVE_PANEL
    ),
]
Port = Annotated[
    int, typer.Option("--port", min=0, max=65535, help="TCP port.", rich_help_panel=SERVE_PANEL)
]
MaxUploadMb = Annotated[
    float,
    typer.Option(
        "--max-upload-mb", min=0.001, help="Largest upload accepted.", rich_help_panel=SERVE_PANEL
    ),
]
QueueSize = Annotated[
    int,
    typer.Option(
        "--queue",
        min=1,
        help="Photos that may wait for the device; more get 503.",
        rich_help_panel=SERVE_PANEL,
    ),
]


@dataclasses.dataclass(frozen=True)
class ServeOptions(OptionGroup):
    """Where ``serve`` listens, how much it accepts, and the model it serves."""

    host: Host = "127.0.0.1"
    port: Port = 7860
    max_upload_mb: MaxUploadMb = 64
    queue: QueueSize = 8
    model: Model = DEFAULT_MODEL
    device: Device = "auto"
    precision: Precision = "auto"
    tile: Tile = "auto"
    offline: Offline = False
    max_pixels: MaxPixels = None
    quiet: Quiet = False
    verbose: Verbose = False

    def settings(self) -> ServeSettings:
        """The server's settings; a host that is not loopback answers any Host name."""
        from sam_deblur_cli.serve.jobs import ServeSettings, is_loopback

        settings = ServeSettings(
            model=self.model,
            device=self.device,
            precision=self.precision,
            tile=self.tile,
            offline=self.offline,
            max_upload_bytes=int(self.max_upload_mb * 2**20),
            max_pixels=self.max_pixels,
            queue_size=self.queue,
        )
        # reached by names and addresses we cannot list
        return settings if is_loopback(self.host) else dataclasses.replace(settings, hosts=None)


# --------------------------------------------------------------------------- train

TRAIN_DATA_PANEL = "Data and masks"
TRAIN_NET_PANEL = "Network"
TRAIN_OPT_PANEL = "Optimisation"
TRAIN_RUN_PANEL = "Run folder"


@dataclasses.dataclass(frozen=True)
class TrainNetOptions(OptionGroup):
    """The network a run trains and where it starts (``train``)."""

    variant: Annotated[
        str | None,
        typer.Option("--variant", help="plain, cat or map.", rich_help_panel=TRAIN_NET_PANEL),
    ] = None
    width: Annotated[int, typer.Option("--width", rich_help_panel=TRAIN_NET_PANEL)] = 32
    enc_blocks: Annotated[
        str,
        typer.Option(
            "--enc-blocks", help="NAFBlocks per encoder level.", rich_help_panel=TRAIN_NET_PANEL
        ),
    ] = "1,1,1,28"
    mask_dropout: Annotated[
        float | None,
        typer.Option(
            "--mask-dropout",
            help="Default 0.5 for map, 0 otherwise.",
            rich_help_panel=TRAIN_NET_PANEL,
        ),
    ] = None
    init: Annotated[
        str | None,
        typer.Option(
            "--init",
            help="Start from a checkpoint file or model name; a plain NAFNet may start a "
            "cat/map net.",
            rich_help_panel=TRAIN_NET_PANEL,
        ),
    ] = None
    default_tlc: Annotated[
        bool,
        typer.Option(
            "--default-tlc/--no-default-tlc",
            help="Whether the registered model runs TLC by default (--tlc/--no-tlc of the "
            "other commands overrides it).",
            rich_help_panel=TRAIN_NET_PANEL,
        ),
    ] = False
    # the old spelling, which elsewhere means "TLC for this run"
    tlc: Annotated[bool | None, typer.Option("--tlc/--no-tlc", hidden=True)] = None

    @property
    def registered_tlc(self) -> bool:
        """The TLC default of the registered model (``--default-tlc`` or the old ``--tlc``)."""
        return self.default_tlc if self.tlc is None else self.tlc


@dataclasses.dataclass(frozen=True)
class TrainDataOptions(OptionGroup):
    """What a run reads and how (``train``)."""

    masks_from: Annotated[
        str,
        typer.Option(
            "--masks-from",
            help="dataset (mask files), sam (SAM once per image, cached) or predeblur:MODEL.",
            rich_help_panel=TRAIN_DATA_PANEL,
        ),
    ] = "dataset"
    crop: Annotated[
        int, typer.Option("--crop", help="Random crop size.", rich_help_panel=TRAIN_DATA_PANEL)
    ] = 256
    val: Annotated[
        Path | None,
        typer.Option(
            "--val",
            help="Held-out pairs, validated on whole images.",
            rich_help_panel=TRAIN_DATA_PANEL,
        ),
    ] = None
    data_workers: Annotated[
        int | None,
        typer.Option(
            "--data-workers",
            help="Data loader worker processes (default: the CPUs this process may use, "
            "at most 4).",
            show_default=False,
            rich_help_panel=TRAIN_DATA_PANEL,
        ),
    ] = None
    # the old spelling, which in ``batch`` means Ray workers
    workers: Annotated[int | None, typer.Option("--workers", hidden=True)] = None
    skip_bad_pairs: Annotated[
        bool,
        typer.Option(
            "--skip-bad-pairs",
            help="Leave unusable files out instead of stopping.",
            rich_help_panel=TRAIN_DATA_PANEL,
        ),
    ] = False

    @property
    def loader_workers(self) -> int:
        """Data loader processes (``--data-workers`` or the old ``--workers``; by default what
        the machine gives this process, at most 4: more only compete for the CPUs, and torch
        warns)."""
        chosen = self.data_workers if self.workers is None else self.workers
        if chosen is not None:
            return chosen
        affinity = getattr(os, "sched_getaffinity", None)
        return min(4, len(affinity(0)) if affinity is not None else (os.cpu_count() or 1))


@dataclasses.dataclass(frozen=True)
class TrainOptOptions(OptionGroup):
    """The optimisation (``train``); the defaults are upstream's recipe."""

    steps: Annotated[int, typer.Option("--steps", rich_help_panel=TRAIN_OPT_PANEL)] = 200_000
    batch: Annotated[
        int,
        typer.Option(
            "--batch",
            help="GLOBAL batch per step (all GPUs x --accum).",
            rich_help_panel=TRAIN_OPT_PANEL,
        ),
    ] = 32
    accum: Annotated[
        int,
        typer.Option(
            "--accum", help="Micro-batches accumulated per step.", rich_help_panel=TRAIN_OPT_PANEL
        ),
    ] = 1
    lr: Annotated[float, typer.Option("--lr", rich_help_panel=TRAIN_OPT_PANEL)] = 1e-3
    ema: Annotated[
        float, typer.Option("--ema", help="EMA decay (0: off).", rich_help_panel=TRAIN_OPT_PANEL)
    ] = 0.0
    seed: Annotated[int, typer.Option("--seed", rich_help_panel=TRAIN_OPT_PANEL)] = 0


@dataclasses.dataclass(frozen=True)
class TrainRunOptions(OptionGroup):
    """The run folder: how often it is written, what it keeps, the model it registers."""

    val_every: Annotated[int, typer.Option("--val-every", rich_help_panel=TRAIN_RUN_PANEL)] = 10_000
    save_every: Annotated[int, typer.Option("--save-every", rich_help_panel=TRAIN_RUN_PANEL)] = (
        5_000
    )
    keep: Annotated[
        int,
        typer.Option(
            "--keep",
            help="Numbered checkpoints kept besides last and best.",
            rich_help_panel=TRAIN_RUN_PANEL,
        ),
    ] = 2
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            help="Model name to register (default: the run folder's name).",
            rich_help_panel=TRAIN_RUN_PANEL,
        ),
    ] = None


@dataclasses.dataclass(frozen=True)
class TrainOptions(OptionGroup):
    """Every setting of a new training run (``train``), by panel."""

    net: TrainNetOptions = TrainNetOptions()
    data: TrainDataOptions = TrainDataOptions()
    opt: TrainOptOptions = TrainOptOptions()
    run: TrainRunOptions = TrainRunOptions()
