"""Paired datasets: where the blurred/sharp pairs of a dataset live and how they pair.

A dataset is either a root in the upstream layout (``input/`` blurred, ``target/`` sharp,
optional ``input_mask/`` segmask PNGs and ``grouped_masks/`` npz groups, all paired by file
stem; a ``test/`` folder holding them is found too) or two folders of blurred and sharp
images. Pure path logic: nothing here reads an image. ``eval`` and ``train`` read their
datasets through this module, so both accept the same layouts.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sam_deblur_cli.errors import UsageError


@dataclass(frozen=True)
class Dataset:
    """Where the pairs live. Mask folders are None when the dataset has none."""

    blurred: Path
    sharp: Path
    segmasks: Path | None = None  # upstream input_mask/: uint8 segmask PNGs
    groups: Path | None = None  # upstream grouped_masks/: npz boolean stacks

    @property
    def has_masks(self) -> bool:
        return self.segmasks is not None or self.groups is not None


@dataclass(frozen=True)
class Pair:
    """One file stem. ``blurred`` or ``sharp`` is None when that side is missing."""

    name: str
    blurred: Path | None
    sharp: Path | None
    mask: Path | None = None


@dataclass(frozen=True)
class Issue:
    """A pair (``model`` None) or one model's result on it that could not be evaluated."""

    name: str
    model: str | None
    reason: str


def open_dataset(source: Path, sharp: Path | None = None) -> Dataset:
    """Resolve ``BLUR_DIR SHARP_DIR`` or a dataset root (``input/``, ``target/``, or ``test/``
    holding them); raise UsageError when the folders are not there."""
    if sharp is not None:
        for folder in (source, sharp):
            if not folder.is_dir():
                raise UsageError(f"{folder} is not a folder; pass a folder of images.")
        return Dataset(blurred=source, sharp=sharp)
    root = source / "test" if not (source / "input").is_dir() else source
    if not ((root / "input").is_dir() and (root / "target").is_dir()):
        raise UsageError(
            f"{source} has no input/ and target/ folders; pass a dataset root in the upstream "
            "layout or two folders, BLUR_DIR SHARP_DIR."
        )
    return Dataset(
        blurred=root / "input",
        sharp=root / "target",
        segmasks=_dir_or_none(root / "input_mask"),
        groups=_dir_or_none(root / "grouped_masks"),
    )


def list_pairs(dataset: Dataset) -> tuple[list[Pair], list[Issue]]:
    """Pair image files by stem, sorted by name; incomplete pairs are kept, ambiguous stems
    (``a.png`` beside ``a.jpg``) are returned as issues."""
    from sam_deblur_cli.imageio import SUPPORTED_SUFFIXES

    blurred, issues = _images_by_stem(dataset.blurred, SUPPORTED_SUFFIXES)
    sharp, sharp_issues = _images_by_stem(dataset.sharp, SUPPORTED_SUFFIXES)
    segmasks, _ = _images_by_stem(dataset.segmasks, frozenset({".png"}))
    groups, _ = _images_by_stem(dataset.groups, frozenset({".npz"}))
    issues += sharp_issues
    ambiguous = {issue.name for issue in issues}
    names = sorted((blurred.keys() | sharp.keys()) - ambiguous)
    pairs = [
        Pair(name, blurred.get(name), sharp.get(name), segmasks.get(name) or groups.get(name))
        for name in names
    ]
    return pairs, issues


def _images_by_stem(
    folder: Path | None, suffixes: frozenset[str]
) -> tuple[dict[str, Path], list[Issue]]:
    """Files of ``folder`` with one of ``suffixes`` (any case) by stem; hidden files ignored."""
    found: dict[str, Path] = {}
    issues: list[Issue] = []
    for path in _files(folder):
        if path.suffix.lower() not in suffixes or path.name.startswith("."):
            continue
        if path.stem in found:
            reason = f"{found[path.stem].name} and {path.name} share a name; keep one of them."
            issues.append(Issue(path.stem, None, reason))
        found[path.stem] = path
    return found, issues


def _files(folder: Path | None) -> Iterator[Path]:
    if folder is None:
        return iter(())
    return (path for path in sorted(folder.iterdir()) if path.is_file())


def _dir_or_none(path: Path) -> Path | None:
    return path if path.is_dir() else None
