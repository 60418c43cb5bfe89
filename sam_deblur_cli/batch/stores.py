"""Object stores (``s3://``, ``gs://``) for the Ray batch: planning, staging in, uploading out.

pyarrow's filesystems (a dependency of Ray Data) do the I/O with the credentials of the
environment: ``pyarrow.fs.FileSystem.from_uri`` reads ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION``, ``AWS_PROFILE`` and a custom
endpoint from ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` (MinIO, moto), and for GCS
``GOOGLE_APPLICATION_CREDENTIALS`` or the machine's own account. (The plain ``S3FileSystem()``
constructor ignores the endpoint variables, so every filesystem here comes from a URI.)

A store job runs the local batch's own per-job code on local files: the worker copies the
input object into a private temporary folder, :func:`.local.run_job` decodes, deblurs and
writes there, and the output (after its overlay, if any) is uploaded. An object appears only
when its upload completes, so no reader, and no resume, ever sees half an output. Resume
lists the output prefix once instead of asking for each object.
"""

from __future__ import annotations

import functools
import logging
import mimetypes
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePath, PurePosixPath
from typing import TYPE_CHECKING, Any

from sam_deblur_cli.batch.plan import (
    StoreJob,
    listed_lines,
    listed_paths,
    mirrored_names,
    scan_folder,
)
from sam_deblur_cli.errors import ImageReadError, ImageWriteError, UsageError
from sam_deblur_cli.naming import is_video_path, overlay_path

if TYPE_CHECKING:
    from sam_deblur_cli.imageio import Picture
    from sam_deblur_cli.pipeline import Deblurrer, FileOptions, Record

logger = logging.getLogger(__name__)

SCHEMES = ("s3", "gs", "gcs")
# What a Ray worker needs to reach the same buckets as the command (sent with the run).
CREDENTIAL_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_PROFILE",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "GOOGLE_CLOUD_PROJECT",
)
_URI = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://(.*)")


def is_uri(text: str) -> bool:
    """Whether ``text`` is a URI (``scheme://...``) rather than a local path."""
    return _URI.fullmatch(str(text)) is not None


def check_uri(uri: str) -> str:
    """``uri`` without trailing slashes; UsageError for what this module cannot address."""
    match = _URI.fullmatch(uri)
    if match is None or match.group(1) not in SCHEMES:
        raise UsageError(f"{uri} is not an s3:// or gs:// URI; use one of those or a local path.")
    if "?" in uri or "#" in uri:
        raise UsageError(
            f"{uri} carries options; set them in the environment instead (for a custom S3 "
            "endpoint, AWS_ENDPOINT_URL)."
        )
    if not match.group(2).strip("/"):
        raise UsageError(f"{uri} names no bucket; write it as {match.group(1)}://BUCKET/PREFIX.")
    return uri.rstrip("/")


def join(root: str, rel: PurePath) -> str:
    """``rel`` under ``root``, a URI or a local folder."""
    return f"{root}/{rel.as_posix()}" if is_uri(root) else str(Path(root) / rel)


def plan_store_batch(
    in_dir: str,
    out_dir: str,
    *,
    recursive: bool = False,
    paths_from: Path | None = None,
    format: str | None = None,
) -> list[StoreJob]:
    """Jobs of a batch with an object store at either end, as :func:`.plan.plan_batch` and
    :func:`.plan.plan_path_list` plan folders: the same filter, mirrored names and checks.

    A URI input is listed once (images by extension, hidden names skipped, objects under the
    output prefix left out); ``paths_from`` lines are relative to IN_DIR (or full URIs inside
    it) and nothing is listed. Videos are refused: Ray's workers deblur photos only.
    """
    in_root = check_uri(in_dir) if is_uri(in_dir) else in_dir
    out_root = check_uri(out_dir) if is_uri(out_dir) else out_dir
    if in_root == out_root:
        raise UsageError(f"The output {out_dir} is the input {in_dir}; choose another one.")
    if paths_from is not None:
        rels = _listed(in_root, paths_from)
    elif is_uri(in_root):
        rels = _scan_prefix(in_root, out_root, recursive=recursive)
    else:
        folder = Path(in_root)
        rels = [_relative(path, folder) for path in scan_folder(folder, recursive=recursive)]
    _refuse_videos(in_root, rels)
    names = mirrored_names(rels, format)
    jobs = [
        StoreJob(join(in_root, rel), join(out_root, name))
        for rel, name in zip(rels, names, strict=True)
    ]
    _check_outputs(jobs)
    return jobs


def _listed(in_root: str, list_file: Path) -> list[PurePosixPath]:
    """The keys (or paths, for a folder) ``list_file`` names, relative to ``in_root``."""
    if not is_uri(in_root):
        folder = Path(in_root)
        return [_relative(path, folder) for path in listed_paths(folder, list_file)]
    rels = []
    for line in listed_lines(list_file):
        if is_uri(line):
            if not line.startswith(in_root + "/"):
                raise UsageError(
                    f"{line} (in {list_file}) is not inside {in_root}; list keys relative to it."
                )
            line = line[len(in_root) + 1 :]
        rel = PurePosixPath(line)
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise UsageError(
                f"{line} (in {list_file}) is not inside {in_root}; list paths relative to it."
            )
        rels.append(rel)
    return list(dict.fromkeys(rels))


def _relative(path: Path, folder: Path) -> PurePosixPath:
    return PurePosixPath(path.relative_to(folder).as_posix())


def _scan_prefix(in_root: str, out_root: str, *, recursive: bool) -> list[PurePosixPath]:
    """Image and video keys under the prefix ``in_root``, relative to it, sorted."""
    from sam_deblur_cli.imageio import is_image_path

    found = []
    for rel in _list_files(in_root, recursive=recursive, missing_ok=False):
        if any(part.startswith(".") for part in rel.parts):
            continue
        if join(in_root, rel).startswith(out_root + "/"):
            continue  # the output prefix inside the input one
        if is_image_path(rel.name) or is_video_path(rel.name):
            found.append(rel)
    return sorted(found)


def _refuse_videos(in_root: str, rels: Sequence[PurePosixPath]) -> None:
    videos = [rel for rel in rels if is_video_path(rel.name)]
    if videos:
        raise UsageError(
            f"{join(in_root, videos[0])} is a video ({len(videos)} in all); videos are "
            "deblurred from local or shared folders only, so copy them there or leave them "
            "out with --paths-from."
        )


def _check_outputs(jobs: Sequence[StoreJob]) -> None:
    seen: dict[str, str] = {}
    for job in jobs:
        key = job.dst.casefold()
        if key in seen:
            raise UsageError(
                f"{seen[key]} and {job.src} would both be written to {job.dst}; "
                "rename one of them or write them to different places."
            )
        seen[key] = job.src


def existing_outputs(outputs: Iterable[str]) -> set[str]:
    """Which of ``outputs`` (URIs or local paths) exist: one recursive listing per bucket,
    of the longest prefix the outputs share, instead of one request per object."""
    outputs = list(outputs)
    found = {out for out in outputs if not is_uri(out) and Path(out).exists()}
    by_bucket: dict[str, list[str]] = {}
    for out in filter(is_uri, outputs):
        scheme, path = out.split("://", 1)
        by_bucket.setdefault(f"{scheme}://{path.split('/', 1)[0]}", []).append(out)
    for bucket, uris in by_bucket.items():
        parents = [str(PurePosixPath(uri[len(bucket) :]).parent) for uri in uris]
        common = _common_prefix(parents)
        root = bucket + common.rstrip("/")
        listed = {join(root, rel) for rel in _list_files(root, recursive=True, missing_ok=True)}
        found.update(uri for uri in uris if uri in listed)
    return found


def _common_prefix(paths: Sequence[str]) -> str:
    parts = [PurePosixPath(path).parts for path in paths]
    shared = []
    for column in zip(*parts, strict=False):
        if len(set(column)) != 1:
            break
        shared.append(column[0])
    return str(PurePosixPath(*shared)) if shared else "/"


def _list_files(root: str, *, recursive: bool, missing_ok: bool) -> list[PurePosixPath]:
    """Files (objects) under the prefix ``root``, relative to it."""
    from pyarrow import fs as pafs

    filesystem, base = filesystem_for(root)
    selector = pafs.FileSelector(base, recursive=recursive, allow_not_found=missing_ok)
    try:
        infos = filesystem.get_file_info(selector)
    except FileNotFoundError:
        raise UsageError(f"{root} holds no objects; check the bucket and prefix.") from None
    except OSError as exc:
        raise UsageError(
            f"Cannot list {root} ({_first_line(exc)}); check the URI and the credentials "
            "in the environment (AWS_* or GOOGLE_APPLICATION_CREDENTIALS)."
        ) from None
    return [
        PurePosixPath(info.path).relative_to(base)
        for info in infos
        if info.type == pafs.FileType.File
    ]


def filesystem_for(uri: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path inside it) for ``uri``; one filesystem per bucket."""
    scheme, path = uri.split("://", 1)
    bucket = path.split("/", 1)[0]
    settings = tuple(os.environ.get(name) for name in CREDENTIAL_ENV)
    return _bucket_filesystem(f"{scheme}://{bucket}", settings), path.rstrip("/")


@functools.cache
def _bucket_filesystem(bucket: str, settings: tuple[str | None, ...]) -> Any:
    """The filesystem of ``bucket``, made again when the credential variables change."""
    from pyarrow import fs as pafs

    try:
        return pafs.FileSystem.from_uri(bucket)[0]
    except (OSError, ValueError) as exc:  # pyarrow.ArrowInvalid is a ValueError
        raise UsageError(
            f"Cannot open {bucket} ({_first_line(exc)}); check the URI and the credentials "
            "in the environment (AWS_* or GOOGLE_APPLICATION_CREDENTIALS)."
        ) from None


def download(uri: str, local: Path) -> None:
    """Copy the object ``uri`` to the new file ``local`` (ImageReadError when it cannot)."""
    filesystem, path = filesystem_for(uri)
    local.parent.mkdir(parents=True, exist_ok=True)
    try:
        with filesystem.open_input_stream(path) as stream, open(local, "xb") as file:
            shutil.copyfileobj(stream, file, 1 << 20)
    except FileNotFoundError:
        raise ImageReadError(f"{uri} does not exist; check the name.") from None
    except OSError as exc:
        raise ImageReadError(
            f"Cannot read {uri} ({_first_line(exc)}); check its permissions."
        ) from None


def upload(local: Path, uri: str) -> None:
    """Write the file ``local`` to ``uri`` in one upload: the object appears only when the
    upload completes (ImageWriteError when it cannot)."""
    filesystem, path = filesystem_for(uri)
    kind = mimetypes.guess_type(local.name)[0]
    data = local.read_bytes()
    try:
        stream = filesystem.open_output_stream(
            path, metadata={"Content-Type": kind} if kind else None
        )
        stream.write(data)  # whole, so a failure leaves no part for a later close to publish
        stream.close()
    except OSError as exc:
        raise ImageWriteError(
            f"Cannot write {uri} ({_first_line(exc)}); check that the credentials may write there."
        ) from None


def run_store_job(deblurrer: Deblurrer, job: StoreJob, options: FileOptions) -> Record:
    """One store job on this worker: the record :func:`.local.run_job` gives for the same
    files on disk, with the URIs as ``input`` / ``output`` (and ``overlay``). Reading and
    writing times include the transfers; a failure of this input is recorded, not raised."""
    from sam_deblur_cli.batch.local import run_job, timed_read
    from sam_deblur_cli.batch.plan import Job

    with tempfile.TemporaryDirectory(prefix="sam-deblur-") as folder:
        src = Path(folder, "in", PurePosixPath(job.src).name) if is_uri(job.src) else Path(job.src)
        dst = Path(folder, "out", PurePosixPath(job.dst).name) if is_uri(job.dst) else Path(job.dst)

        def read() -> tuple[Picture, float]:
            start = time.perf_counter()
            if is_uri(job.src):
                download(job.src, src)
            picture, _ = timed_read(src, options)
            return picture, round(time.perf_counter() - start, 4)

        record = run_job(deblurrer, Job(src, dst), options, read)
        if record["status"] == "ok" and is_uri(job.dst):
            _publish(record, dst, job.dst)
    record.update({"input": job.src, "output": job.dst})
    if record.get("error"):
        record["error"] = _renamed(str(record["error"]), [(src, job.src), (dst, job.dst)])
    return record


def _publish(record: Record, local: Path, uri: str) -> None:
    """Upload the output (the overlay first, so an existing output means a finished job)."""
    from sam_deblur_cli.batch.local import recording_failure

    start = time.perf_counter()
    with recording_failure(record, f"uploading {uri}"):
        if "overlay" in record:
            overlay = f"{uri.rsplit('/', 1)[0]}/{overlay_path(local).name}"
            upload(Path(record["overlay"]), overlay)
            record["overlay"] = overlay
        upload(local, uri)
    seconds = record["seconds"]
    seconds["write"] = round(seconds.get("write", 0.0) + time.perf_counter() - start, 4)


def _renamed(text: str, pairs: Sequence[tuple[Path, str]]) -> str:
    for local, shown in pairs:
        text = text.replace(str(local), shown)
    return text


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
