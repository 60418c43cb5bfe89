"""Training data: named pairs decoded once, masks per image, random aligned crops on the fly.

Layout and pairing are ``eval``'s (``datasets.open_dataset`` / ``list_pairs``): ``input/``
blurred, ``target/`` sharp, optional ``input_mask/`` segmask PNGs or ``grouped_masks/``
npz, all paired by file stem (never by listing position, upstream.md 8). Every image is
decoded once into uint8 and kept, with its masks as a label map (MAP) or segmask (CAT),
so workers only crop and transform.

A run's sample sequence is a pure function of (seed, sample number k): sample k draws its
image from a per-epoch permutation and its crop and dihedral transform from
``default_rng([seed, k])``. Resuming at step s therefore only needs s, and a sample is the
same whichever process or worker makes it; :class:`StepSampler` hands each process its
slice of every global batch (the job of a DistributedSampler).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from sam_deblur_cli.errors import InputError, UsageError
from sam_deblur_cli.nets import GUIDE_KINDS

if TYPE_CHECKING:
    from sam_deblur_cli.datasets import Issue, Pair
    from sam_deblur_cli.masks import MaskResult

logger = logging.getLogger(__name__)

# make_masks(name, blurred uint8 H x W x 3, the pair) -> masks for that image
MaskSource = Callable[[str, np.ndarray, "Pair"], "MaskResult"]
Progress = Callable[[int, int, str], None]  # (images done, total, name)

_DECODE_THREADS = 4


@dataclass(frozen=True)
class TrainImage:
    """One decoded pair. ``blurred``/``sharp``: H x W x 3 uint8 RGB. ``guide``: None (plain),
    H x W uint8 segmask (CAT) or H x W int32 label map, groups 0..G-1, -1 in no group (MAP)."""

    name: str
    blurred: np.ndarray
    sharp: np.ndarray
    guide: np.ndarray | None

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.blurred.shape[0]), int(self.blurred.shape[1])


def dihedral(array: np.ndarray, k: int) -> np.ndarray:
    """The k-th (0..7) of the 8 dihedral transforms of an H x W (x C) array: bit 0 flips
    left-right, bit 1 flips up-down, bit 2 transposes H and W (upstream's three coin flips).
    The same ``k`` on image, target and masks keeps them aligned (no rot90 mix-up)."""
    if k & 1:
        array = array[:, ::-1]
    if k & 2:
        array = array[::-1]
    if k & 4:
        array = array.swapaxes(0, 1)
    return array


def read_pairs(
    folder: Path,
    *,
    variant: str,
    masks: MaskSource | None,
    progress: Progress | None = None,
) -> tuple[list[TrainImage], list[Issue]]:
    """Decode every pair of the dataset at ``folder`` and its masks (``masks`` None for plain).

    Returns the usable pairs in name order and a ``datasets.Issue`` for every file that
    cannot be used (a missing partner, an ambiguous stem, an unreadable image or mask, a
    size mismatch). Raises UsageError when ``folder`` is not a dataset.
    """
    from sam_deblur_cli.datasets import Issue, list_pairs, open_dataset

    pairs, issues = list_pairs(open_dataset(folder))
    images: list[TrainImage] = []
    with ThreadPoolExecutor(_DECODE_THREADS) as pool:
        decoded = pool.map(_decode, pairs)
        for done, (pair, result) in enumerate(zip(pairs, decoded, strict=True), start=1):
            if isinstance(result, str):
                issues.append(Issue(pair.name, None, result))
            else:
                try:
                    images.append(_with_masks(pair, *result, variant=variant, masks=masks))
                except InputError as exc:
                    issues.append(Issue(pair.name, None, str(exc)))
            if progress is not None:
                progress(done, len(pairs), pair.name)
    return images, issues


def _decode(pair: Pair) -> tuple[np.ndarray, np.ndarray] | str:
    """Both images of ``pair`` as uint8 RGB, or the reason they cannot be used."""
    from sam_deblur_cli.imageio import read_image
    from sam_deblur_cli.metrics import to_uint8

    if pair.blurred is None or pair.sharp is None:
        side = "sharp" if pair.sharp is None else "blurred"
        return f"No {side} image named {pair.name}.*; add it or remove its partner."
    try:
        blurred, sharp = read_image(pair.blurred).rgb, read_image(pair.sharp).rgb
    except InputError as exc:
        return str(exc)
    if blurred.shape != sharp.shape:
        return (
            f"Blurred image is {blurred.shape[1]} x {blurred.shape[0]} but sharp image is "
            f"{sharp.shape[1]} x {sharp.shape[0]}; pairs must match in size."
        )
    return to_uint8(blurred), to_uint8(sharp)


def _with_masks(
    pair: Pair, blurred: np.ndarray, sharp: np.ndarray, *, variant: str, masks: MaskSource | None
) -> TrainImage:
    kind = GUIDE_KINDS[variant]
    if kind == "none":
        return TrainImage(pair.name, blurred, sharp, None)
    if masks is None:
        raise UsageError(f"The {variant} variant needs masks; pass --masks-from.")
    result = masks(pair.name, blurred, pair)
    if kind == "segmask":
        if result.segmask is None:
            raise UsageError(
                f"The cat variant reads the segmask's gray values, which the groups .npz of "
                f"{pair.name} does not keep; provide input_mask/ PNGs or use --masks-from sam."
            )
        return TrainImage(pair.name, blurred, sharp, result.segmask)
    return TrainImage(pair.name, blurred, sharp, result.labels.astype(np.int32))


def dataset_masks(pair_name: str, blurred: np.ndarray, pair: Pair) -> MaskResult:
    """A :data:`MaskSource` reading the dataset's own mask file (segmask PNG or groups npz)."""
    from sam_deblur_cli.errors import MaskError
    from sam_deblur_cli.masks import load_mask_file

    if pair.mask is None:
        raise MaskError(
            f"No mask file for {pair_name} in input_mask/ or grouped_masks/; add one or use "
            "--masks-from sam."
        )
    return load_mask_file(pair.mask, blurred.shape[:2])


def generated_masks(
    recipe_name: str,
    *,
    device: str = "cpu",
    predeblur: str | None = None,
    offline: bool = False,
) -> MaskSource:
    """A :data:`MaskSource` running SAM (through the mask cache, so once per image) with the
    manifest recipe ``recipe_name``; with ``predeblur`` (a model name) SAM sees the blurred
    image restored by that model first, as upstream's training masks appear to have been made.
    """
    from sam_deblur_cli import weights
    from sam_deblur_cli.masks import MaskGenerator
    from sam_deblur_cli.metrics import to_uint8

    manifest = weights.load_manifest()
    recipe = manifest.recipes.get(recipe_name)
    if recipe is None:
        raise UsageError(f"The manifest has no mask recipe {recipe_name!r}; name one it has.")
    generator = MaskGenerator(recipe.sam, recipe, manifest=manifest, device=device, offline=offline)
    restore: Callable[[np.ndarray], np.ndarray] | None = None
    if predeblur is not None:
        from sam_deblur_cli.amg import RecipeOverrides
        from sam_deblur_cli.pipeline import Deblurrer, DeblurSettings

        settings = DeblurSettings(
            recipe=RecipeOverrides(model=predeblur),
            device=device,
            precision="fp32",
            offline=offline,
        )
        model = Deblurrer(settings, manifest=manifest, load_sam=False)

        def restore(rgb_u8: np.ndarray) -> np.ndarray:
            guide = model.compute_masks(rgb_u8) if model.needs_masks else None
            return to_uint8(model.deblur(rgb_u8.astype(np.float32) / 255, guide))

    def make(name: str, blurred: np.ndarray, pair: Pair) -> MaskResult:
        return generator(blurred if restore is None else restore(blurred))

    return make


def check_crop(images: Sequence[TrainImage], crop: int) -> None:
    """UsageError when any image is smaller than the crop (naming the first such image)."""
    for image in images:
        h, w = image.shape
        if h < crop or w < crop:
            raise UsageError(
                f"{image.name} is {w} x {h}, smaller than the {crop} x {crop} crop; use a "
                "smaller --crop or leave the image out."
            )


class CropDataset(Dataset[tuple[torch.Tensor, ...]]):
    """Sample k (any non-negative int) -> (blurred, sharp[, guide]) crops, uint8 tensors.

    Images come out as 3 x C x C uint8 (divide by 255 on the device), the CAT guide as
    1 x C x C uint8, the MAP guide as C x C int64 label map where groups missing from the
    crop simply do not occur (ids are not renumbered; -1: in no group).
    """

    def __init__(self, images: Sequence[TrainImage], crop: int, seed: int) -> None:
        if not images:
            raise UsageError("The dataset has no usable pair; add input/ and target/ images.")
        self.images = list(images)
        self.crop = crop
        self.seed = seed
        self._perm: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return 1 << 62  # an endless stream: the sampler decides which k are drawn

    def plan(self, k: int) -> tuple[int, int, int, int]:
        """(image index, top, left, dihedral transform) of sample ``k``."""
        epoch, position = divmod(k, len(self.images))
        if self._perm is None or self._perm[0] != epoch:
            rng = np.random.default_rng([self.seed, 0, epoch])
            self._perm = (epoch, rng.permutation(len(self.images)))
        index = int(self._perm[1][position])
        h, w = self.images[index].shape
        rng = np.random.default_rng([self.seed, 1, k])
        top = int(rng.integers(0, h - self.crop + 1))
        left = int(rng.integers(0, w - self.crop + 1))
        return index, top, left, int(rng.integers(0, 8))

    def __getitem__(self, k: int) -> tuple[torch.Tensor, ...]:
        index, top, left, transform = self.plan(k)
        image = self.images[index]
        window = np.s_[top : top + self.crop, left : left + self.crop]

        def cut(array: np.ndarray) -> np.ndarray:
            return np.ascontiguousarray(dihedral(array[window], transform))

        blurred = torch.from_numpy(cut(image.blurred)).permute(2, 0, 1)
        sharp = torch.from_numpy(cut(image.sharp)).permute(2, 0, 1)
        if image.guide is None:
            return blurred, sharp
        guide = torch.from_numpy(cut(image.guide))
        if guide.dtype == torch.uint8:
            return blurred, sharp, guide[None]
        return blurred, sharp, guide.long()


def collate(samples: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    """Stack each field; label maps of different group counts stack as they are."""
    return tuple(torch.stack(field) for field in zip(*samples, strict=True))


class StepSampler(Sampler[list[int]]):
    """Micro-batches of sample numbers for one process, from step ``start`` to ``steps``.

    Step s covers samples [s * batch, (s + 1) * batch); its ``accum`` chunks of
    ``world * micro`` samples are split between the ranks in rank order, so any world size
    and accumulation with the same global batch sees the same samples per step.
    """

    def __init__(
        self, *, start: int, steps: int, batch: int, accum: int, rank: int, world: int
    ) -> None:
        self.start, self.steps, self.batch, self.accum = start, steps, batch, accum
        self.rank, self.world = rank, world
        self.micro = batch // (world * accum)

    def __len__(self) -> int:
        return (self.steps - self.start) * self.accum

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.steps):
            for a in range(self.accum):
                first = step * self.batch + (a * self.world + self.rank) * self.micro
                yield list(range(first, first + self.micro))


def make_loader(
    dataset: CropDataset,
    sampler: StepSampler,
    *,
    workers: int,
    pin_memory: bool = False,
    worker_init_fn: Callable[[int], None] | None = None,
) -> DataLoader[tuple[torch.Tensor, ...]]:
    """The DataLoader of a run: worker processes, our own generator (so creating it does
    not draw from torch's global RNG, which the network's mask dropout uses)."""
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=workers,
        pin_memory=pin_memory,
        worker_init_fn=worker_init_fn,
        prefetch_factor=4 if workers else None,
        generator=torch.Generator().manual_seed(dataset.seed),
    )
