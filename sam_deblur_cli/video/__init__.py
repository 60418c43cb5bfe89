"""Video in and out through PyAV: probing, decoding frames with their timestamps, encoding.

``probe``/``read``/``write`` sit beside ``imageio`` (no torch), ``convert`` re-encodes the
streams an output container cannot hold; ``run`` is the engine that feeds frames to a
Deblurrer. Nothing here imports ``av`` at module level, so the CLI's
``--help`` stays instant; this module only knows which file names are videos.
"""

from __future__ import annotations

from pathlib import Path

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi")

__all__ = ["VIDEO_SUFFIXES", "is_video_path"]


def is_video_path(path: Path | str) -> bool:
    """Whether ``path``'s extension is one of the video containers we read (case-insensitive)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES
