"""`sam-deblur IMAGE...` (the default command) and `sam-deblur batch IN_DIR -o OUT_DIR`.

Both are thin: their options (shared vocabulary, ``cli/options.py``) are collected into
one :class:`DeblurOptions`, which becomes ``DeblurSettings`` / ``FileOptions``; they plan the
jobs (``sam_deblur_cli.batch``) and hand them to the local runner. Human messages go to
stderr, ``--json`` records (one line per input) to stdout. Heavy modules load inside the
command bodies, so ``--help`` never imports torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

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
    from sam_deblur_cli.pipeline import Deblurrer, DeblurSettings, FileOptions, Record
    from sam_deblur_cli.video.run import VideoSettings


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

        r = self.recipe
        return DeblurSettings(
            model=r.model,
            sam=r.sam,
            amg=r.amg,
            channel_order=r.channel_order,
            fast_masks=r.fast_masks,
            sam_precision=r.sam_precision,
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
        from sam_deblur_cli.video.run import VideoSettings, parse_batch_frames
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
    out = options.out
    try:
        with library_logging(verbose=out.verbose, quiet=out.quiet):
            settings, file_options = options.settings(), options.file_options()
            jobs = plan()
            video = options.video_settings()
            _check_videos(jobs, video)
            if file_options.overlay:
                _check_overlay(settings)
            # Every check that needs no model runs before one is built or downloaded; when
            # that settles every input (all done already, all unreadable), no model is needed.
            settled = _preflight(jobs, settings, file_options)
            if len(settled) == len(jobs):
                records = [settled[i] for i in range(len(jobs))]
                for record in records:
                    _report(record, out)
            else:  # the engine meets the settled inputs again, in their turn, as before
                records = _engine(jobs, settings, file_options, out, engine, video)
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


def _engine(
    jobs: Sequence[Job | StoreJob],
    settings: DeblurSettings,
    options: FileOptions,
    out: OutputMode,
    engine: EngineOptions | None,
    video: VideoSettings,
) -> list[Record]:
    """The records of ``jobs``, in order, from the engine the options chose."""
    if engine is not None and engine.uses_ray:
        return _process_ray(jobs, settings, options, out, engine, video)
    return _process(_local(jobs), settings, options, out, video)


def _check_videos(jobs: Sequence[Job | StoreJob], video: VideoSettings) -> None:
    """The video options, and no masks file given to a video (before any model)."""
    from sam_deblur_cli.batch.plan import Job
    from sam_deblur_cli.video import is_video_path

    video.check()
    for job in jobs:
        if isinstance(job, Job) and job.masks_file is not None and is_video_path(job.src):
            raise UsageError("--masks belongs to a photo; a video gets its masks from SAM.")


def _check_overlay(settings: DeblurSettings) -> None:
    """--overlay draws the masks a model uses: refused (before any model) for one without."""
    from sam_deblur_cli.weights import load_manifest

    entry = load_manifest().get(settings.model)
    if not entry.needs_masks:
        raise UsageError(
            f"--overlay draws the SAM masks a model uses, and {entry.name} takes none; "
            "drop --overlay or pick a model that takes masks."
        )


def _preflight(
    jobs: Sequence[Job | StoreJob], settings: DeblurSettings, options: FileOptions
) -> dict[int, Record]:
    """The records of the local jobs settled with no model (existing outputs skipped,
    unreadable inputs failed), by job index; SetupErrors stop the run here."""
    from sam_deblur_cli.batch.plan import Job, preflight
    from sam_deblur_cli.pipeline import blank_record

    local = {i: job for i, job in enumerate(jobs) if isinstance(job, Job)}
    indices = list(local)
    verdicts = preflight(
        list(local.values()), overwrite=options.overwrite, max_pixels=options.max_pixels
    )
    records: dict[int, Record] = {}
    for position, (status, error) in sorted(verdicts.items()):
        index = indices[position]
        record = blank_record(local[index].src, local[index].dst, settings)
        record.update(status=status, error=error)
        records[index] = record
    return records


def _local(jobs: Sequence[Job | StoreJob]) -> list[Job]:
    """The jobs, every one on this machine (planning refuses store jobs without Ray)."""
    from sam_deblur_cli.batch.plan import Job

    local = [job for job in jobs if isinstance(job, Job)]
    assert len(local) == len(jobs), "store jobs run on Ray only"
    return local


def _process(
    jobs: Sequence[Job],
    settings: DeblurSettings,
    options: FileOptions,
    out: OutputMode,
    video: VideoSettings,
) -> list[Record]:
    from contextlib import nullcontext

    from sam_deblur_cli.cli.output import download_progress
    from sam_deblur_cli.pipeline import Deblurrer
    from sam_deblur_cli.video import is_video_path

    # SAM only when some image has no mask file (and the model takes masks at all).
    uses_sam = any(job.masks_file is None for job in jobs)
    # First use downloads weights: a bar on a terminal (a 2.6 GB SAM must not look like a
    # hang); in logs and pipes the library's own log line says it.
    bar = not out.quiet and err_console.is_terminal
    with download_progress() if bar else nullcontext(None) as fetching:
        deblurrer = Deblurrer(settings, load_sam=uses_sam, progress=fetching)
    notes = deblurrer.departures() if uses_sam and deblurrer.needs_masks else []
    if notes and not out.quiet:
        # Overrides make masks unlike the training masks.
        note(" ".join(notes) + " Results may be worse.")
    videos = {i: job for i, job in enumerate(jobs) if is_video_path(job.src)}
    images = [job for i, job in enumerate(jobs) if i not in videos]
    records = iter(_images(deblurrer, images, options, out, bar) if images else [])
    done = {
        i: _video(deblurrer, job, video, options.overwrite, out, bar) for i, job in videos.items()
    }
    return [done[i] if i in done else next(records) for i in range(len(jobs))]


def _images(
    deblurrer: Deblurrer, jobs: Sequence[Job], options: FileOptions, out: OutputMode, bar: bool
) -> list[Record]:
    from sam_deblur_cli.batch.local import BatchCallbacks, run_batch
    from sam_deblur_cli.pipeline import STAGES

    # A live bar only on a terminal: in logs and pipes it would be noise.
    with StageProgress(len(jobs), STAGES, label="deblurring", enabled=bar) as progress:

        def start(job: Job) -> None:
            progress.describe(job.src.name)

        def done(job: Job | StoreJob, record: Record) -> None:
            progress.advance(record)
            _report(record, out)

        return run_batch(deblurrer, jobs, options=options, callbacks=BatchCallbacks(start, done))


def _video(
    deblurrer: Deblurrer,
    job: Job,
    settings: VideoSettings,
    overwrite: bool,
    out: OutputMode,
    bar: bool,
) -> Record:
    """One video: frames, fps and time left on a bar; a failure becomes its record."""
    import logging

    from rich.progress import TextColumn

    from sam_deblur_cli.cli.output import progress_bar
    from sam_deblur_cli.errors import InputError, SetupError
    from sam_deblur_cli.video.run import run_video

    with progress_bar(TextColumn("{task.fields[fps]}"), enabled=bar) as progress:
        task = progress.add_task(job.src.name, total=None, fps="")

        def on_frame(done: int, total: int | None, fps: float) -> None:
            progress.update(task, completed=done, total=total, fps=f"{fps:.2f} frames/s")

        try:
            record = run_video(
                deblurrer,
                job.src,
                job.dst,
                settings=settings,
                overwrite=overwrite,
                on_frame=on_frame,
            )
        except SetupError:
            raise
        except InputError as exc:
            record = {**deblurrer.new_record(job.src, job.dst), "status": "failed"}
            record["error"] = str(exc)
        except Exception as exc:  # one video's unforeseen failure must not end the run
            logging.getLogger(__name__).info("failure on %s", job.src, exc_info=True)
            record = {**deblurrer.new_record(job.src, job.dst), "status": "failed"}
            record["error"] = f"{type(exc).__name__}: {exc}"
    _report(record, out)
    return record


def _process_ray(
    jobs: Sequence[Job | StoreJob],
    settings: DeblurSettings,
    options: FileOptions,
    out: OutputMode,
    engine: EngineOptions,
    video: VideoSettings,
) -> list[Record]:
    """The photos on Ray (``batch/ray.py``), then the videos here with the local engine (the
    Ray actors deblur photos only; store jobs hold none); records in job order."""
    from sam_deblur_cli.video import is_video_path

    videos = {i for i, job in enumerate(jobs) if is_video_path(job.src)}
    photos = [job for i, job in enumerate(jobs) if i not in videos]
    on_ray = iter(_photos_on_ray(photos, settings, options, out, engine) if photos else [])
    here = _local([jobs[i] for i in sorted(videos)])
    local = iter(_process(here, settings, options, out, video) if here else [])
    return [next(local) if i in videos else next(on_ray) for i in range(len(jobs))]


def _photos_on_ray(
    jobs: Sequence[Job | StoreJob],
    settings: DeblurSettings,
    options: FileOptions,
    out: OutputMode,
    engine: EngineOptions,
) -> list[Record]:
    """Photo jobs on Ray: the bar and the lines follow the result rows."""
    from sam_deblur_cli.batch.local import BatchCallbacks
    from sam_deblur_cli.batch.ray import RayOptions, parse_workers, run_batch_ray
    from sam_deblur_cli.pipeline import STAGES

    ray_options = RayOptions(
        address=engine.ray_address,
        workers=None if engine.workers is None else parse_workers(engine.workers),
        gpus_per_worker=engine.gpus_per_worker,
    )
    bar = not out.quiet and err_console.is_terminal
    with StageProgress(len(jobs), STAGES, label="deblurring on Ray", enabled=bar) as progress:

        def done(job: Job | StoreJob, record: Record) -> None:
            progress.advance(record)
            _report(record, out)

        callbacks = BatchCallbacks(on_done=done)
        return run_batch_ray(settings, jobs, options, ray_options=ray_options, callbacks=callbacks)


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
