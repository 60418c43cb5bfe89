"""Resuming a video: the hidden work folder of finished segments beside the output, and the
fingerprint of everything that must not change for those segments to be reused."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sam_deblur_cli.pipeline import Deblurrer
    from sam_deblur_cli.video.engine import VideoSettings
    from sam_deblur_cli.video.probe import VideoInfo

logger = logging.getLogger(__name__)


def work_folder(dst: Path) -> Path:
    """The hidden folder beside ``dst`` that holds its finished segments while it is made."""
    return dst.with_name(f".{dst.name}.parts")


def fingerprint(
    deblurrer: Deblurrer, info: VideoInfo, settings: VideoSettings, encoding: Any
) -> dict[str, Any]:
    """What must not change for finished segments to be reused."""
    stat = info.path.stat()
    return {
        "input": [str(info.path.resolve()), stat.st_size, stat.st_mtime_ns],
        "model": deblurrer.entry.name,
        "masks": deblurrer.recipe_key if deblurrer.needs_masks else None,
        "tlc": deblurrer.tlc,
        "mask_value": deblurrer.mask_value,
        "precision": deblurrer.placement.precision,
        "tile": str(deblurrer.tile),
        # none changes the frames (batches agree with single frames to float rounding)
        "video": {
            k: v
            for k, v in asdict(settings).items()
            if k not in ("keep_going_frames", "batch_frames", "masks_beside_network")
        },
        "encoding": asdict(encoding),
        "colour": asdict(info.colour),  # the segments carry the tags
    }


def prepare_work(dst: Path, fingerprint: dict[str, Any]) -> Path:
    """The work folder for ``dst``: kept when its fingerprint matches, else emptied."""
    from sam_deblur_cli.files import write_text

    work = work_folder(dst)
    text = json.dumps(fingerprint, sort_keys=True, default=str)
    stamp = work / "settings.json"
    if work.is_dir() and stamp.is_file() and stamp.read_text() == text:
        logger.info("resuming %s from %s", dst, work)
        return work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    write_text(stamp, text)
    logger.debug("work folder %s (%s)", work, hashlib.sha256(text.encode()).hexdigest()[:12])
    return work


def finished_segments(work: Path, suffix: str) -> list[Path]:
    """The consecutive finished segments seg-000000, seg-000001, ... (a gap ends the list)."""
    found: list[Path] = []
    while (path := work / f"seg-{len(found):06d}{suffix}").is_file():
        found.append(path)
    return found
