"""Where each input goes: jobs (input -> output) for files and folders, and their checks.

Path logic, no pixels: only :func:`preflight` opens inputs, for their headers. The batch
engines (local, Ray, object stores) and the default command plan with these functions; output
names themselves come from :mod:`sam_deblur_cli.naming`, which the single-image flow uses too.
Planning errors are UsageErrors, raised before any work.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Literal

from sam_deblur_cli.errors import InputError, MaskError, UsageError
from sam_deblur_cli.naming import default_output, is_video_path, output_suffix


@dataclass(frozen=True)
class Job:
    """One input and the output it goes to."""

    src: Path
    dst: Path
    masks_file: Path | None = None


@dataclass(frozen=True)
class StoreJob:
    """A job with an end in an object store: ``src`` and ``dst`` are ``s3://`` / ``gs://``
    URIs or, for the other end, local paths as strings (:mod:`.stores` moves the bytes).
    Only the Ray engine runs them; they never take a masks file."""

    src: str
    dst: str


def plan_files(
    inputs: Sequence[Path | str],
    output: str | None = None,
    *,
    format: str | None = None,
    masks_file: Path | str | None = None,
) -> list[Job]:
    """Jobs for the default command: inputs and where ``-o`` sends them.

    No ``output``: ``<stem>_deblurred<ext>`` beside each input. ``output`` is a folder when
    there are several inputs, when it ends with a slash or when it is an existing folder;
    outputs in a folder keep the input's name. Otherwise it is the output file of the one input.
    """
    sources = list(dict.fromkeys(Path(p) for p in inputs))
    if masks_file is not None and len(sources) > 1:
        raise UsageError("--masks belongs to one image; pass one input, or run them one by one.")
    masks = None if masks_file is None else Path(masks_file)
    if output is not None and len(sources) > 1 and _names_a_file(output):
        raise UsageError(
            f"-o {output} names one file, but {len(sources)} inputs were given; pass a folder "
            f"(-o {Path(output).stem}/) or one input."
        )
    if output is None:
        jobs = [Job(src, default_output(src, format), masks) for src in sources]
    elif len(sources) > 1 or output.endswith(("/", os.sep)) or Path(output).is_dir():
        folder = Path(output)
        jobs = [
            Job(src, folder / (src.stem + output_suffix(src, format)), masks) for src in sources
        ]
    else:
        jobs = [Job(sources[0], Path(output), masks)]
    check_jobs(jobs)
    return jobs


def scan_folder(in_dir: Path, *, recursive: bool, exclude: Path | None = None) -> list[Path]:
    """Image and video files of ``in_dir`` (by extension, hidden files skipped), sorted.

    ``exclude``: a folder left out of the scan (the output folder, when it lies inside).
    """
    if not in_dir.is_dir():
        raise UsageError(f"{in_dir} is not a folder; pass the folder that holds the images.")
    from sam_deblur_cli.imageio import is_image_path

    pattern = "**/*" if recursive else "*"
    excluded = exclude.resolve() if exclude is not None and exclude.exists() else None
    found = []
    for path in in_dir.glob(pattern):
        rel = path.relative_to(in_dir)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        if not (is_image_path(path) or is_video_path(path)):
            continue
        if excluded is not None and excluded in path.resolve().parents:
            continue
        found.append(path)
    return sorted(found)


def plan_batch(
    in_dir: Path, out_dir: Path, *, recursive: bool = False, format: str | None = None
) -> list[Job]:
    """Jobs for every image of ``in_dir``, mirroring its tree under ``out_dir``.

    Outputs keep the input's name (and format unless ``format``). When two inputs would
    share an output (``a.png`` and ``a.jpg`` with ``--format png``, or names that differ
    only by case), each of them gets its input extension added to the stem:
    ``a_png.png`` and ``a_jpg.png``. The rule is deterministic, so resuming finds them again;
    a plan that still collides (a real ``a_png.png`` beside them) is refused.
    """
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    if out_dir.resolve() == in_dir.resolve():
        raise UsageError(f"The output folder {out_dir} is the input folder; choose another one.")
    return mirror_jobs(
        in_dir, out_dir, scan_folder(in_dir, recursive=recursive, exclude=out_dir), format
    )


def mirror_jobs(
    in_dir: Path, out_dir: Path, sources: Sequence[Path], format: str | None = None
) -> list[Job]:
    """Jobs sending each of ``sources`` (inside ``in_dir``) to the same place under ``out_dir``,
    with :func:`plan_batch`'s naming rules (shared by the folder scan and path lists)."""
    sources = list(dict.fromkeys(sources))
    names = mirrored_names([src.relative_to(in_dir) for src in sources], format)
    jobs = [Job(src, out_dir / name) for src, name in zip(sources, names, strict=True)]
    check_jobs(jobs)
    return jobs


def mirrored_names(inputs: Sequence[PurePath], format: str | None = None) -> list[PurePath]:
    """The output name of each input, both relative to their folders (or object-store
    prefixes): :func:`plan_batch`'s rules, the one place they are written."""
    wanted = [rel.with_suffix(output_suffix(rel, format)) for rel in inputs]
    by_key: dict[str, list[int]] = {}
    for index, dst in enumerate(wanted):
        by_key.setdefault(str(dst).casefold(), []).append(index)
    for clashing in by_key.values():
        if len(clashing) > 1:
            for index in clashing:
                dst, extension = wanted[index], inputs[index].suffix.lstrip(".")
                wanted[index] = dst.with_name(f"{dst.stem}_{extension}{dst.suffix}")
    return wanted


def check_jobs(jobs: Sequence[Job]) -> None:
    """Refuse plans where two inputs share an output or an output is an input (UsageError)."""
    seen: dict[str, Path] = {}
    inputs = {job.src.resolve() for job in jobs}
    for job in jobs:
        key = str(job.dst.resolve()).casefold()
        if key in seen:
            raise UsageError(
                f"{seen[key]} and {job.src} would both be written to {job.dst}; "
                "rename one of them or write them to different folders."
            )
        seen[key] = job.src
        if job.dst.resolve() in inputs:
            raise UsageError(
                f"The output {job.dst} would replace an input; choose another output folder."
            )


def plan_path_list(
    in_dir: Path, out_dir: Path, list_file: Path, *, format: str | None = None
) -> list[Job]:
    """Jobs for the images named in ``list_file`` (one path per line, relative to ``in_dir``
    or absolute inside it; blank lines and lines starting with ``#`` are skipped), mirrored
    under ``out_dir`` as :func:`plan_batch` does. Nothing is globbed or opened: a missing or
    broken image fails as that one input when it is run."""
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    if out_dir.resolve() == in_dir.resolve():
        raise UsageError(f"The output folder {out_dir} is the input folder; choose another one.")
    return mirror_jobs(in_dir, out_dir, listed_paths(in_dir, list_file), format)


def listed_paths(in_dir: Path, list_file: Path) -> list[Path]:
    """The paths ``list_file`` names, under ``in_dir`` (UsageError for one outside it)."""
    root = in_dir.resolve()
    sources: list[Path] = []
    for line in listed_lines(list_file):
        path = Path(line) if Path(line).is_absolute() else in_dir / line
        if root != path.resolve() and root not in path.resolve().parents:
            raise UsageError(
                f"{line} (in {list_file}) is not inside {in_dir}; list paths relative to it."
            )
        sources.append(in_dir / path.resolve().relative_to(root))
    return sources


def listed_lines(list_file: Path) -> list[str]:
    """The entries of a path list: stripped lines, once each, in order, without blank lines
    and ``#`` comments (UsageError when the file cannot be read as text)."""
    try:
        lines = Path(list_file).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(
            f"Cannot read the path list {list_file} ({exc}); pass a text file."
        ) from None
    stripped = dict.fromkeys(line.strip() for line in lines)
    return [line for line in stripped if line and not line.startswith("#")]


def _names_a_file(output: str) -> bool:
    """Whether ``-o output`` reads as a file name: an image or video extension, no trailing
    slash, not an existing folder."""
    from sam_deblur_cli.imageio import is_image_path

    if output.endswith(("/", os.sep)) or Path(output).is_dir():
        return False
    return is_image_path(output) or is_video_path(output)


#: A job settled before any model is built: ("skipped", None) or ("failed", the reason).
Settled = tuple[Literal["skipped", "failed"], str | None]


def preflight(
    jobs: Sequence[Job], *, overwrite: bool, max_pixels: int | None = None
) -> dict[int, Settled]:
    """Every check of a plan that needs no model, run before one is built or downloaded.

    Returns the jobs settled already, by index: an existing output without ``overwrite`` is
    skipped; an input that is missing or whose header does not decode (images; videos must
    exist), or a missing masks file, fails as that one input. Raises UsageError for what
    stops the whole run: an output that is a folder, a folder no output can be written to.
    ``max_pixels`` None: imageio's default limit.
    """
    settled: dict[int, Settled] = {}
    for index, job in enumerate(jobs):
        if job.dst.is_dir():
            raise UsageError(f"The output {job.dst} is a folder; give an output file name.")
        if job.dst.exists() and not overwrite:
            settled[index] = ("skipped", None)
            continue
        try:
            _check_input(job, max_pixels)
        except InputError as exc:
            settled[index] = ("failed", str(exc))
    for folder in sorted({job.dst.parent for i, job in enumerate(jobs) if i not in settled}):
        check_writable(folder)
    return settled


def _check_input(job: Job, max_pixels: int | None) -> None:
    from sam_deblur_cli.imageio import read_header

    if job.masks_file is not None and not job.masks_file.is_file():
        raise MaskError(f"{job.masks_file}: no such mask file; check the --masks path.")
    if not is_video_path(job.src):
        read_header(job.src, **({} if max_pixels is None else {"max_pixels": max_pixels}))
    elif not job.src.is_file():
        raise InputError(f"{job.src}: no such file; check the path.")


def check_writable(folder: Path) -> None:
    """UsageError unless a file can be created in ``folder``, or, while it does not exist, in
    the nearest folder above it (where it will be made). Tries for real: permissions,
    read-only mounts and immutable folders all show."""
    import tempfile

    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(
            f"{existing} is a file, so nothing can be written into {folder}; "
            "choose another output path."
        )
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise UsageError(
            f"Cannot write into {existing} ({exc.strerror or exc}); choose another output "
            "folder or fix its permissions."
        ) from None
