"""`sam-deblur IMAGE...` (the default command) and `sam-deblur batch IN_DIR -o OUT_DIR`.

Both are thin: their options (shared vocabulary, ``cli/options.py``) are collected into
one :class:`DeblurOptions`, which becomes ``DeblurSettings`` / ``FileOptions``; they plan the
jobs (``sam_deblur_cli.batch.plan``) and hand them to ``batch.dispatch.run_jobs``, which
routes them to the engines; this module draws its progress and reports the records. Human
messages go to stderr, ``--json`` records (one line per input) to stdout. Heavy modules
load inside the command bodies, so ``--help`` never imports torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from sam_deblur_cli.cli.app import app
from sam_deblur_cli.cli.options import (
    MODEL_PANEL,
    OUTPUT,
    Device,
    EngineOptions,
    ImageFormat,
    MaskRecipeOptions,
    MaxPixels,
    Offline,
    OptionGroup,
    OutputMode,
    Overlay,
    Overwrite,
    Precision,
    Quality,
    RequireGpu,
    Tile,
    Tlc,
    VideoOptions,
    takes_groups,
)
from sam_deblur_cli.cli.output import (
    StageProgress,
    echo_json,
    err_console,
    fail,
    failure_table,
    library_logging,
    note,
    nothing_to_do,
    reason,
    say,
)
from sam_deblur_cli.errors import (
    EXIT_INPUT,
    EXIT_INTERRUPTED,
    EXIT_OK,
    NothingToDoError,
    SamDeblurError,
    UsageError,
)

if TYPE_CHECKING:
    from sam_deblur_cli.batch.plan import Job, StoreJob
    from sam_deblur_cli.pipeline import DeblurSettings, FileOptions, Record
    from sam_deblur_cli.video.engine import FrameCallback, VideoSettings


@dataclasses.dataclass(frozen=True)
class DeblurOptions(OptionGroup):
    """Every option `deblur` and `batch` share: masks, network, device, files, output."""

    recipe: MaskRecipeOptions = dataclasses.field(default_factory=MaskRecipeOptions)
    tlc: Tlc = None
    device: Device = "auto"
    require_gpu: RequireGpu = False
    precision: Precision = "auto"
    tile: Tile = "auto"
    offline: Offline = False
    overlay: Overlay = False
    overwrite: Overwrite = False
    format: ImageFormat = None
    quality: Quality = 95
    max_pixels: MaxPixels = None
    out: OutputMode = dataclasses.field(default_factory=OutputMode)
    video: VideoOptions = dataclasses.field(default_factory=VideoOptions)

    def settings(self) -> DeblurSettings:
        """How the run deblurs (the library's settings object)."""
        from sam_deblur_cli.pipeline import DeblurSettings

        return DeblurSettings(
            recipe=self.recipe.overrides(),
            device=self.device,
            require_gpu=self.require_gpu,
            precision=self.precision,
            tile=self.tile,
            tlc=self.tlc,
            offline=self.offline,
        )

    def file_options(self) -> FileOptions:
        """How files are read and written."""
        from sam_deblur_cli.pipeline import FileOptions

        return FileOptions(
            format=self.format,
            quality=self.quality,
            max_pixels=self.max_pixels,
            overwrite=self.overwrite,
            overlay=self.overlay,
        )

    def video_settings(self) -> VideoSettings:
        """How videos are deblurred and encoded."""
        from sam_deblur_cli.video.engine import VideoSettings, parse_batch_frames
        from sam_deblur_cli.video.write import EncodeOptions

        v = self.video
        return VideoSettings(
            mask_every=v.mask_every,
            scene_cut=v.scene_cut or None,
            batch_frames=parse_batch_frames(v.batch_frames),
            keep_going_frames=v.keep_going_frames,
            encode=EncodeOptions(codec=v.codec, crf=v.crf, preset=v.preset, pix_fmt=v.pix_fmt),
        )


DEBLUR_HELP = (
    "Deblur photos and videos: `sam-deblur photo.jpg` writes photo_deblurred.jpg beside it.\n\n"
    "Videos too (mp4, mov, mkv, webm, avi): `sam-deblur clip.mp4` writes clip_deblurred.mp4 "
    "with every frame deblurred, the same timestamps, and the sound copied; an interrupted "
    "video resumes where it stopped.\n\n"
    "Existing outputs are skipped unless --overwrite; inputs are never overwritten.\n\n"
    "Exit codes: 0 done, 1 some input failed, 2 usage or set-up error, 130 interrupted."
)
BATCH_HELP = (
    "Deblur every image (and video) of IN_DIR into OUT_DIR; a second run resumes "
    "(skips what exists).\n\n"
    "With --engine ray, IN_DIR and OUT_DIR may also be s3://BUCKET/PREFIX or "
    "gs://BUCKET/PREFIX (credentials from the environment).\n\n"
    "Outputs keep their input's name and sub-folder. When two inputs would share an output "
    "(a.png and a.jpg with --format png), both get their input extension added: "
    "a_png.png and a_jpg.png.\n\n"
    "Exit codes: 0 done, 1 some input failed (summary at the end), 2 usage or set-up error "
    "(found before any image is processed), 3 nothing to do (no image or video found), "
    "130 interrupted (no partial files are left)."
)


@app.command(name="deblur", help=DEBLUR_HELP)
@takes_groups
def deblur_command(
    inputs: Annotated[
        list[Path],
        typer.Argument(help="Images or videos to deblur.", metavar="IMAGE", show_default=False),
    ],
    *,
    output: Annotated[
        str | None,
        typer.Option(
            *OUTPUT,
            help="Output file (one input) or folder "
            "(default: <name>_deblurred.<ext> beside each input).",
        ),
    ] = None,
    masks: Annotated[
        Path | None,
        typer.Option(
            "--masks",
            help="Precomputed masks for the one input (segmask PNG or groups .npz); skips SAM.",
            rich_help_panel=MODEL_PANEL,
        ),
    ] = None,
    options: DeblurOptions,
) -> None:
    """Deblur photos (the default command: `sam-deblur photo.jpg`)."""

    def plan() -> list[Job]:
        from sam_deblur_cli.batch.plan import plan_files

        return plan_files(inputs, output, format=options.format, masks_file=masks)

    _run(plan, options)


@app.command(name="batch", help=BATCH_HELP)
@takes_groups
def batch_command(
    in_dir: Annotated[
        str,
        typer.Argument(
            help="Folder of images (or an s3:// / gs:// prefix with --engine ray).",
            metavar="IN_DIR",
            show_default=False,
        ),
    ],
    *,
    output: Annotated[
        str, typer.Option(*OUTPUT, help="Output folder (created if needed).", show_default=False)
    ],
    recursive: Annotated[
        bool, typer.Option("--recursive", "-r", help="Include sub-folders; their tree is mirrored.")
    ] = False,
    paths_from: Annotated[
        Path | None,
        typer.Option(
            "--paths-from",
            help="Deblur the images listed in this file (one path per line, relative to "
            "IN_DIR) instead of scanning IN_DIR.",
        ),
    ] = None,
    options: DeblurOptions,
    engine: EngineOptions,
) -> None:
    """Deblur every image of a folder into another folder."""

    def plan() -> Sequence[Job | StoreJob]:
        from sam_deblur_cli.batch.plan import plan_batch, plan_path_list
        from sam_deblur_cli.batch.stores import is_uri, plan_store_batch

        jobs: Sequence[Job | StoreJob]
        if is_uri(in_dir) or is_uri(output):
            if not engine.uses_ray:
                raise UsageError("s3:// and gs:// inputs and outputs need --engine ray; add it.")
            jobs = plan_store_batch(
                in_dir, output, recursive=recursive, paths_from=paths_from, format=options.format
            )
        elif paths_from is not None:
            jobs = plan_path_list(Path(in_dir), Path(output), paths_from, format=options.format)
        else:
            jobs = plan_batch(
                Path(in_dir), Path(output), recursive=recursive, format=options.format
            )
        if not jobs:
            where = f"{paths_from} lists" if paths_from is not None else f"{in_dir} holds"
            deeper = "" if recursive or paths_from is not None else " (add -r for sub-folders)"
            raise NothingToDoError(f"{where} no images or videos{deeper}.")
        return jobs

    _run(plan, options, engine)


def _run(
    plan: Callable[[], Sequence[Job | StoreJob]],
    options: DeblurOptions,
    engine: EngineOptions | None = None,
) -> None:
    """Shared body: set-up errors exit 2 before any image; failures of inputs exit 1."""
    from sam_deblur_cli.batch.dispatch import run_jobs

    out = options.out
    try:
        with library_logging(verbose=out.verbose, quiet=out.quiet):
            settings, file_options = options.settings(), options.file_options()
            jobs = plan()
            video = options.video_settings()
            ray = engine.ray_options() if engine is not None else None
            display = _Display(out)
            records = run_jobs(
                jobs, settings, file_options, video=video, ray_options=ray, progress=display
            )
    except NothingToDoError as exc:
        raise nothing_to_do(str(exc), json=out.json) from None
    except SamDeblurError as exc:
        raise fail(str(exc), exc.exit_code) from None
    except KeyboardInterrupt:
        raise fail(
            "interrupted; finished outputs are kept, none is left half-written", EXIT_INTERRUPTED
        ) from None
    failed = [r for r in records if r["status"] == "failed"]
    if len(failed) > 0 and len(records) > 1:
        failure_table(failed, len(records))
    raise typer.Exit(EXIT_INPUT if failed else EXIT_OK)


class _Display:
    """The command line's view of a run (``batch.dispatch.RunProgress``): live bars on a
    terminal only (in logs and pipes they would be noise), a line or a JSON record per input."""

    def __init__(self, out: OutputMode) -> None:
        self.out = out
        self.bar = not out.quiet and err_console.is_terminal
        self.stages: StageProgress | None = None

    def loading(self) -> AbstractContextManager[Any]:
        """First use downloads weights: a bar on a terminal (a 2.6 GB SAM must not look like
        a hang); in logs and pipes the library's own log line says it."""
        from sam_deblur_cli.cli.output import download_progress

        return download_progress() if self.bar else nullcontext(None)

    def notes(self, notes: list[str]) -> None:
        if not self.out.quiet:  # overrides make masks unlike the training masks
            note(" ".join(notes) + " Results may be worse.")

    @contextmanager
    def photos(self, count: int, *, on_ray: bool) -> Iterator[None]:
        from sam_deblur_cli.pipeline import STAGES

        label = "deblurring on Ray" if on_ray else "deblurring"
        with StageProgress(count, STAGES, label=label, enabled=self.bar) as self.stages:
            try:
                yield
            finally:
                self.stages = None

    def started(self, job: Job) -> None:
        if self.stages is not None:
            self.stages.describe(job.src.name)

    @contextmanager
    def video(self, job: Job) -> Iterator[FrameCallback]:
        """Frames, fps and time left on a bar."""
        from rich.progress import TextColumn

        from sam_deblur_cli.cli.output import progress_bar

        with progress_bar(TextColumn("{task.fields[fps]}"), enabled=self.bar) as progress:
            task = progress.add_task(job.src.name, total=None, fps="")

            def on_frame(done: int, total: int | None, fps: float) -> None:
                progress.update(task, completed=done, total=total, fps=f"{fps:.2f} frames/s")

            yield on_frame

    def done(self, job: Job | StoreJob, record: Record) -> None:
        if self.stages is not None:
            self.stages.advance(record)
        _report(record, self.out)


def _report(record: Record, out: OutputMode) -> None:
    """One input's outcome: its JSON record, or a line on stderr (failures even with -q)."""
    if out.json:
        echo_json(record)
        return
    status = record["status"]
    if status == "ok" and not out.quiet:
        total = sum(record["seconds"].values())
        # stderr, like the progress bar it must print above; stdout is kept for --json.
        say(f"{record['input']} -> {record['output']} ({total:.1f} s)")
        if record.get("kept_frames"):
            say(f"{record['input']}: {record['error']}", label="warning:", style="yellow")
    elif status == "skipped" and not out.quiet:
        say(
            f"{record['input']}: {record['output']} exists (--overwrite replaces it)",
            label="skipped",
            style="yellow",
        )
    elif status == "failed":
        say(f"{record['input']}: {reason(record)}", label="failed:", style="bold red")
