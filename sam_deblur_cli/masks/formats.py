"""Mask files in and out. Every write is atomic (``files.atomic_file``).

Formats (``H x W`` is the image size):

- segmask PNG: 8-bit gray, the upstream encoding (upstream.md 5.3), as upstream saved it;
- groups ``.npz``: key ``masks``, bool G x 1 x H x W, one slice per distinct segmask value
  in increasing value order (upstream.md 5.4);
- overlay PNG: the photo blended with one colour per group, group boundaries in white;
- mask folder: ``0.png``, ``1.png``... (gray 0/255, generator order) plus ``metadata.csv``,
  exactly as segment-anything's ``scripts/amg.py`` writes them;
- COCO RLE JSON: the list segment-anything's ``scripts/amg.py --convert-to-rle`` writes, each
  mask as ``{"size": [H, W], "counts": "<compressed RLE>"}`` (column-major runs).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from sam_deblur_cli.errors import ImageWriteError, MaskError
from sam_deblur_cli.files import atomic_file, atomic_folder
from sam_deblur_cli.masks.encode import count_groups, labels_from_groups
from sam_deblur_cli.masks.maskset import ListMaskSet, MaskRecord, MaskSet

if TYPE_CHECKING:
    from sam_deblur_cli.masks.result import MaskResult

METADATA_HEADER = (
    "id,area,bbox_x0,bbox_y0,bbox_w,bbox_h,point_input_x,point_input_y,"
    "predicted_iou,stability_score,crop_box_x0,crop_box_y0,crop_box_w,crop_box_h"
)


# --- writes (through files.atomic_file) ----------------------------------------------


def _write_file(path: str | Path, write: Callable[[IO[bytes]], object]) -> Path:
    """Write ``path`` atomically through ``write(file)``; OSError becomes ImageWriteError."""
    path = Path(path)
    try:
        with atomic_file(path) as handle:
            write(handle)
    except (FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        raise ImageWriteError(
            f"Could not write {path}: {exc.strerror}; check that the folder exists and is writable."
        ) from exc
    except OSError as exc:
        raise ImageWriteError(
            f"Could not write {path}: {exc.strerror or exc}; check the free space and permissions."
        ) from exc
    return path


def _png_writer(gray_or_rgb: np.ndarray, compress_level: int = 6) -> Callable[[IO[bytes]], None]:
    from PIL import Image

    def write(handle: IO[bytes]) -> None:
        Image.fromarray(gray_or_rgb).save(handle, format="PNG", compress_level=compress_level)

    return write


# --- segmask PNG and groups npz --------------------------------------------------------


def write_segmask_png(path: str | Path, segmask: np.ndarray, *, compress_level: int = 6) -> Path:
    """Save a segmask (uint8 H x W) as an 8-bit gray PNG."""
    if segmask.dtype != np.uint8 or segmask.ndim != 2:
        raise ValueError(f"segmask must be uint8 H x W, got {segmask.dtype} {segmask.shape}")
    return _write_file(path, _png_writer(segmask, compress_level))


def read_segmask_png(path: str | Path) -> np.ndarray:
    """Read a gray segmask PNG (uint8 H x W). RGB files are accepted only if gray."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            mode, array = image.mode, np.asarray(image)
    # Pillow raises an open-ended set of types on damaged bytes (SyntaxError for a broken
    # chunk, DecompressionBombError for a header claiming billions of pixels...).
    except Exception as exc:
        raise MaskError(
            f"Could not read the mask file {path} ({exc}); pass a gray segmask PNG or a "
            "groups .npz."
        ) from exc
    if mode == "1":
        return array.astype(np.uint8) * 255
    if mode in ("RGB", "RGBA") and (array[..., :3] == array[..., :1]).all():
        return np.ascontiguousarray(array[..., 0])
    if mode != "L":
        raise MaskError(
            f"The mask file {path} is a {mode} image, not an 8-bit gray segmask; save the "
            "segmask as a gray PNG."
        )
    return array


def write_groups_npz(path: str | Path, labels: np.ndarray) -> Path:
    """Save a label map as the upstream groups file (key ``masks``, bool G x 1 x H x W).

    ``np.load`` gives what ``np.savez_compressed(file, masks=groups_from_labels(labels))``
    stored (one deflated zip64 ``masks.npy`` member), but the G x H x W stack (3 GB for 256
    groups at 12 MP) never exists: ``groups_npz`` compresses only the parts of each slice
    where its group has pixels, in a few threads, and reuses one compressed run of zeros.
    """
    from sam_deblur_cli.masks.groups_npz import write_groups

    return _write_file(path, lambda handle: write_groups(handle, labels))


def read_groups_npz(path: str | Path) -> np.ndarray:
    """Read an upstream groups file into a bool stack (G x 1 x H x W or G x H x W)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if "masks" not in data.files:
                raise MaskError(
                    f"The groups file {path} has no 'masks' array (it has {data.files}); "
                    "save the stack under the key 'masks'."
                )
            stack = data["masks"]
    except MaskError:
        raise
    # numpy and zipfile raise an open-ended set of types on a damaged file (BadZipFile,
    # zlib.error, NotImplementedError for an unknown compression, TokenError in the header...).
    except Exception as exc:
        raise MaskError(
            f"Could not read the groups file {path} ({exc}); pass an .npz with a 'masks' stack."
        ) from exc
    if not isinstance(stack, np.ndarray) or stack.ndim not in (3, 4):  # e.g. a damaged header
        raise MaskError(
            f"The groups file {path} holds no G x H x W stack under 'masks'; pass an .npz "
            "written by `sam-deblur masks` or upstream's code."
        )
    return stack


def load_mask_file(path: str | Path, shape: tuple[int, int]) -> MaskResult:
    """Read a segmask PNG or a groups ``.npz`` made for an image of ``shape`` (H, W)."""
    from sam_deblur_cli.masks.result import MaskResult, result_from_segmask

    path = Path(path)
    if path.suffix.lower() == ".npz":
        stack = read_groups_npz(path)
        _check_size(path, stack.shape[-2:], shape)
        labels = labels_from_groups(stack)
        return MaskResult(None, labels, count_groups(labels), 0)
    segmask = read_segmask_png(path)
    _check_size(path, segmask.shape, shape)
    return result_from_segmask(segmask)


def _check_size(path: Path, got: tuple[int, ...], want: tuple[int, int]) -> None:
    if tuple(got) != tuple(want):
        raise MaskError(
            f"The mask file {path} is {got[1]}x{got[0]} pixels but the image is "
            f"{want[1]}x{want[0]}; make the masks from this image."
        )


# --- overlay ---------------------------------------------------------------------------


def group_colours(count: int) -> np.ndarray:
    """``count`` distinct, stable RGB colours (uint8 count x 3): golden-angle hues."""
    index = np.arange(count)
    hue = (index * 0.618033988749895) % 1.0
    saturation = np.where(index % 2 == 0, 0.85, 0.6)
    value = np.where(index % 3 == 1, 0.75, 0.95)
    return _hsv_to_rgb(hue, saturation, value)


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    sector = np.floor(h * 6.0).astype(int) % 6
    f = h * 6.0 - np.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    rgb = np.zeros((h.size, 3))
    for k, (r, g, b) in enumerate(choices):
        rgb[sector == k] = np.stack([r, g, b], axis=-1)[sector == k]
    return np.round(rgb * 255).astype(np.uint8)


def render_overlay(
    rgb_uint8: np.ndarray,
    labels: np.ndarray,
    *,
    plain_label: int | None = None,
    alpha: float = 0.5,
    band_rows: int = 256,
) -> np.ndarray:
    """The photo (RGB uint8 H x W x 3) with one colour per group and white group boundaries.

    ``plain_label`` is left uncoloured (the segmask's value-0 group: pixels no SAM mask
    covers); so are uncovered (-1) pixels. Returns RGB uint8 H x W x 3. The float blend runs
    ``band_rows`` rows at a time (the same values as whole-image arithmetic): at 12 MP a
    whole-image float32 copy and its temporaries would take most of a gigabyte.
    """
    colours = group_colours(count_groups(labels)).astype(np.float32)
    edge = _boundaries(labels)
    out = np.empty_like(rgb_uint8)
    for top in range(0, labels.shape[0], band_rows):
        rows = slice(top, top + band_rows)
        band = labels[rows]
        tinted = band >= 0
        if plain_label is not None:
            tinted &= band != plain_label
        blend = rgb_uint8[rows].astype(np.float32)
        blend[tinted] = blend[tinted] * (1.0 - alpha) + colours[band[tinted]] * alpha
        blend[edge[rows]] = 255.0
        out[rows] = np.round(blend)
    return out


def _boundaries(labels: np.ndarray) -> np.ndarray:
    """Pixels whose right or lower neighbour is another group, thickened for big images."""
    edge = np.zeros(labels.shape, dtype=bool)
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    for _ in range(max(labels.shape) // 1000):  # about 1 px per 1000 px of image
        grown = edge.copy()
        grown[:, 1:] |= edge[:, :-1]
        grown[1:, :] |= edge[:-1, :]
        edge = grown
    return edge


def write_overlay_png(
    path: str | Path, rgb_uint8: np.ndarray, result: MaskResult, *, alpha: float = 0.5
) -> Path:
    """Render and save the overlay of ``result`` on the photo (RGB uint8 H x W x 3)."""
    overlay = render_overlay(rgb_uint8, result.labels, plain_label=result.plain_label, alpha=alpha)
    return _write_file(path, _png_writer(overlay))


# --- per-mask PNGs + metadata.csv (segment-anything scripts/amg.py) ---------------------


def _metadata_row(i: int, rec: MaskRecord) -> str:
    # str() of Python ints and floats, as amg.py writes the values generate() returns.
    fields = [
        i,
        int(rec.area),
        *(int(v) for v in rec.bbox),
        *(float(v) for v in rec.point_coords),
        float(rec.predicted_iou),
        float(rec.stability_score),
        *(int(v) for v in rec.crop_box),
    ]
    return ",".join(str(v) for v in fields)


def write_mask_folder(folder: str | Path, maskset: MaskSet) -> Path:
    """Write ``i.png`` (0/255 gray) per mask and ``metadata.csv``, replacing the folder whole.

    The files go to a staging folder beside ``folder`` that then takes its place
    (``files.atomic_folder``), so a reader never sees a mix of two runs.
    """
    folder = Path(folder)
    try:
        with atomic_folder(folder) as staging:
            rows = [METADATA_HEADER]
            masks = zip(maskset.iter_masks(), maskset.records, strict=True)
            for i, (mask, rec) in enumerate(masks):
                png = _png_writer(np.where(mask, np.uint8(255), np.uint8(0)))
                _write_file(staging / f"{i}.png", png)
                rows.append(_metadata_row(i, rec))
            text = "\n".join(rows).encode()  # amg.py: no newline after the last row
            _write_file(staging / "metadata.csv", lambda handle: handle.write(text))
    except (FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        raise ImageWriteError(
            f"Could not write {folder}: {exc.strerror}; check that {folder.parent} exists and "
            "is writable."
        ) from exc
    except OSError as exc:
        raise ImageWriteError(
            f"Could not write {folder}: {exc.strerror or exc}; check the free space and "
            "permissions."
        ) from exc
    return folder


def read_mask_folder(folder: str | Path) -> ListMaskSet:
    """Read a folder written by :func:`write_mask_folder` (or by segment-anything's amg.py)."""
    folder = Path(folder)
    try:
        with (folder / "metadata.csv").open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as exc:
        raise MaskError(
            f"Could not read {folder / 'metadata.csv'} ({exc.strerror}); pass a folder "
            "written by `sam-deblur masks --format png`."
        ) from exc
    masks = [read_segmask_png(folder / f"{row['id']}.png") > 127 for row in rows]
    records = [_record_from_row(row) for row in rows]
    shape = masks[0].shape if masks else (0, 0)
    return ListMaskSet((int(shape[0]), int(shape[1])), masks, records)


def _xywh(values: Iterable[Any]) -> tuple[int, int, int, int]:
    x, y, w, h = (int(v) for v in values)
    return x, y, w, h


def _record_from_row(row: dict[str, str]) -> MaskRecord:
    return MaskRecord(
        area=int(row["area"]),
        bbox=_xywh(row[f"bbox_{k}"] for k in ("x0", "y0", "w", "h")),
        predicted_iou=float(row["predicted_iou"]),
        stability_score=float(row["stability_score"]),
        point_coords=(float(row["point_input_x"]), float(row["point_input_y"])),
        crop_box=_xywh(row[f"crop_box_{k}"] for k in ("x0", "y0", "w", "h")),
    )


# --- COCO RLE --------------------------------------------------------------------------


def rle_counts(mask: np.ndarray) -> list[int]:
    """COCO run lengths of a bool H x W mask: column-major, starting with a run of zeros."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], changes, [flat.size]))
    counts = np.diff(bounds).tolist()
    return [0, *counts] if flat.size and flat[0] else counts


def encode_rle_string(counts: list[int]) -> str:
    """COCO's compressed RLE string: deltas against the run two back, 5-bit groups + 48."""
    chars: list[str] = []
    for i, count in enumerate(counts):
        x = count - counts[i - 2] if i > 2 else count
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # arithmetic shift: negative deltas end at -1, as in COCO's C code
            more = x != -1 if c & 0x10 else x != 0
            chars.append(chr((c | 0x20 if more else c) + 48))
    return "".join(chars)


def decode_rle_string(text: str) -> list[int]:
    """Inverse of :func:`encode_rle_string`."""
    counts: list[int] = []
    pos = 0
    while pos < len(text):
        x, shift, more = 0, 0, True
        while more:
            c = ord(text[pos]) - 48
            x |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            pos += 1
            shift += 5
            if not more and c & 0x10:
                x |= -1 << shift
        counts.append(x + counts[-2] if len(counts) > 2 else x)
    return counts


def mask_from_rle(rle: dict[str, Any]) -> np.ndarray:
    """Decode ``{"size": [H, W], "counts": str}`` to a bool H x W mask."""
    height, width = (int(v) for v in rle["size"])
    counts = decode_rle_string(rle["counts"])
    if sum(counts) != height * width:
        raise MaskError(
            f"An RLE mask covers {sum(counts)} pixels but its size is {width}x{height}; "
            "the file is corrupt, write it again."
        )
    values = np.arange(len(counts)) % 2 == 1
    return np.repeat(values, counts).reshape(width, height).T


def _coco_annotation(mask: np.ndarray, rec: MaskRecord) -> dict[str, Any]:
    height, width = mask.shape
    return {
        "segmentation": {"size": [height, width], "counts": encode_rle_string(rle_counts(mask))},
        "area": int(rec.area),
        "bbox": [int(v) for v in rec.bbox],
        "predicted_iou": float(rec.predicted_iou),
        "point_coords": [[float(v) for v in rec.point_coords]],
        "stability_score": float(rec.stability_score),
        "crop_box": [int(v) for v in rec.crop_box],
    }


def _coco_chunks(maskset: MaskSet) -> Iterator[str]:
    yield "["
    for i, (mask, rec) in enumerate(zip(maskset.iter_masks(), maskset.records, strict=True)):
        yield (", " if i else "") + json.dumps(_coco_annotation(mask, rec))
    yield "]"


def write_coco_json(path: str | Path, maskset: MaskSet) -> Path:
    """Write the masks as segment-anything's COCO RLE annotation list (one mask in memory)."""

    def write(handle: IO[bytes]) -> None:
        for chunk in _coco_chunks(maskset):
            handle.write(chunk.encode())

    return _write_file(path, write)


def read_coco_json(path: str | Path) -> ListMaskSet:
    """Read a file written by :func:`write_coco_json` back into masks and records."""
    try:
        annotations = json.loads(Path(path).read_text())
        masks = [mask_from_rle(ann["segmentation"]) for ann in annotations]
        records = [_record_from_annotation(ann) for ann in annotations]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MaskError(
            f"Could not read the COCO RLE file {path} ({exc}); write it again with "
            "`sam-deblur masks --format coco`."
        ) from exc
    shape = masks[0].shape if masks else (0, 0)
    return ListMaskSet((int(shape[0]), int(shape[1])), masks, records)


def _record_from_annotation(ann: dict[str, Any]) -> MaskRecord:
    px, py = (float(v) for v in ann["point_coords"][0])
    return MaskRecord(
        area=int(ann["area"]),
        bbox=_xywh(ann["bbox"]),
        predicted_iou=float(ann["predicted_iou"]),
        stability_score=float(ann["stability_score"]),
        point_coords=(px, py),
        crop_box=_xywh(ann["crop_box"]),
    )
