"""File names: which inputs are videos, and where a run writes each input's outputs.

Pure name logic, no pixels and no file system: the single-image flow (``pipeline``), the
batch planner, the video engine and the server all name outputs with these functions, so
an output lands in the same place whichever of them writes it.
"""

from __future__ import annotations

from pathlib import Path, PurePath

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi")


def is_video_path(path: PurePath | str) -> bool:
    """Whether ``path``'s extension is one of the video containers we read (case-insensitive)."""
    return PurePath(path).suffix.lower() in VIDEO_SUFFIXES


def default_output(src: Path, format: str | None = None) -> Path:
    """``photo.jpg`` -> ``photo_deblurred.jpg`` beside it (``format`` may change the extension)."""
    return src.with_name(f"{src.stem}_deblurred{output_suffix(src, format)}")


def overlay_path(dst: Path) -> Path:
    """Where ``--overlay`` puts the mask overlay of output ``dst`` (always a PNG)."""
    return dst.with_name(f"{dst.stem}_overlay.png")


def output_suffix(src: PurePath, format: str | None) -> str:
    """The output extension: ``format``'s usual one, else the input's own (same format).
    A video keeps its own container (``format`` names image formats)."""
    from sam_deblur_cli.imageio import suffix_for_format

    return src.suffix if format is None or is_video_path(src.name) else suffix_for_format(format)
