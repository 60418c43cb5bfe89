"""masks/formats.py: every format written, read back, and checked against its reference."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from sam_deblur_cli.errors import ImageWriteError, MaskError
from sam_deblur_cli.masks import MaskResult, load_mask_file, result_from_maskset
from sam_deblur_cli.masks.encode import groups_from_labels, labels_from_segmask
from sam_deblur_cli.masks.formats import (
    METADATA_HEADER,
    _boundaries,
    decode_rle_string,
    encode_rle_string,
    group_colours,
    read_coco_json,
    read_groups_npz,
    read_mask_folder,
    read_segmask_png,
    render_overlay,
    rle_counts,
    write_coco_json,
    write_groups_npz,
    write_mask_folder,
    write_overlay_png,
    write_segmask_png,
)
from sam_deblur_cli.masks.maskset import ListMaskSet, MaskRecord

# pycocotools 2.0 predates numpy 2's copy keyword; harmless here.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SHAPE = (37, 53)


def blob_maskset(count: int = 12, shape: tuple[int, int] = SHAPE, seed: int = 0) -> ListMaskSet:
    """Overlapping rectangles and discs, with records shaped like SAM's."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    masks, records = [], []
    for _ in range(count):
        cy, cx, r = rng.integers(0, shape[0]), rng.integers(0, shape[1]), rng.integers(3, 15)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        ys, xs = np.nonzero(mask)
        box = (int(xs.min()), int(ys.min()), int(np.ptp(xs)), int(np.ptp(ys)))
        records.append(
            MaskRecord(
                area=int(mask.sum()),
                bbox=box,
                predicted_iou=float(np.float32(rng.random())),
                stability_score=float(np.float32(rng.random())),
                point_coords=(float(cx) + 0.5, float(cy) + 0.25),
                crop_box=(0, 0, shape[1], shape[0]),
            )
        )
        masks.append(mask)
    return ListMaskSet(shape, masks, records)


def test_segmask_png_is_8_bit_gray_and_round_trips(tmp_path: Path) -> None:
    segmask = result_from_maskset(blob_maskset()).segmask
    assert segmask is not None
    path = write_segmask_png(tmp_path / "a_segmask.png", segmask)
    with Image.open(path) as image:
        assert (image.format, image.mode, image.size) == ("PNG", "L", (SHAPE[1], SHAPE[0]))
    np.testing.assert_array_equal(read_segmask_png(path), segmask)


def test_a_gray_rgb_png_is_accepted_and_a_colour_one_refused(tmp_path: Path) -> None:
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(np.stack([gray] * 3, axis=-1)).save(tmp_path / "gray.png")
    np.testing.assert_array_equal(read_segmask_png(tmp_path / "gray.png"), gray)
    colour = np.stack([gray, gray, gray + 1], axis=-1)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    with pytest.raises(MaskError, match="not an 8-bit gray segmask"):
        read_segmask_png(tmp_path / "colour.png")


def test_a_file_that_is_not_an_image_is_a_mask_error(tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(MaskError, match="Could not read the mask file"):
        load_mask_file(tmp_path / "bad.png", (2, 2))


def test_npz_round_trip_gives_the_same_groups(tmp_path: Path) -> None:
    result = result_from_maskset(blob_maskset())
    assert result.segmask is not None
    path = write_groups_npz(tmp_path / "a_groups.npz", result.labels)
    with np.load(path) as data:
        assert data.files == ["masks"]
        stack = data["masks"]
    assert stack.dtype == np.bool_ and stack.shape == (result.groups, 1, *SHAPE)
    for k, value in enumerate(np.unique(result.segmask)):
        np.testing.assert_array_equal(stack[k, 0], result.segmask == value)
    loaded = load_mask_file(path, SHAPE)
    np.testing.assert_array_equal(loaded.labels, result.labels)
    assert (loaded.groups, loaded.count, loaded.segmask) == (result.groups, 0, None)
    with pytest.raises(MaskError, match="pass a segmask PNG"):
        loaded.guide("segmask")


@pytest.mark.parametrize(("groups", "unused"), [(0, None), (1, None), (40, 17)])
def test_npz_written_slice_by_slice_is_what_np_savez_compressed_wrote(
    tmp_path: Path, groups: int, unused: int | None
) -> None:
    # Labels with uncovered (-1) pixels, and an unused label (an empty slice) in the middle.
    labels = np.random.default_rng(groups).integers(-1, groups, size=SHAPE)
    labels[labels == unused] = -1
    path = write_groups_npz(tmp_path / "new.npz", labels)
    np.savez_compressed(tmp_path / "old.npz", masks=groups_from_labels(labels))
    with zipfile.ZipFile(path) as new, zipfile.ZipFile(tmp_path / "old.npz") as old:
        assert new.namelist() == old.namelist() == ["masks.npy"]
        [ours], [theirs] = new.infolist(), old.infolist()
        assert ours.compress_type == theirs.compress_type == zipfile.ZIP_DEFLATED
        assert new.read("masks.npy") == old.read("masks.npy")  # header and every byte
    with np.load(path) as ours_npz, np.load(tmp_path / "old.npz") as theirs_npz:
        stack, expected = ours_npz["masks"], theirs_npz["masks"]
    assert stack.dtype == expected.dtype == np.bool_
    assert stack.shape == expected.shape == (groups, 1, *SHAPE)
    np.testing.assert_array_equal(stack, expected)


def test_npz_bytes_depend_only_on_the_labels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A rerun (after a kill, on another day) must write the very file an unbroken run wrote.
    import time

    labels = result_from_maskset(blob_maskset()).labels
    first = write_groups_npz(tmp_path / "first.npz", labels).read_bytes()
    monkeypatch.setattr(time, "time", lambda: 4_102_444_800.0)  # 2100-01-01
    monkeypatch.setattr(time, "localtime", lambda *_: time.gmtime(4_102_444_800))
    assert write_groups_npz(tmp_path / "again.npz", labels).read_bytes() == first
    with zipfile.ZipFile(tmp_path / "first.npz") as zf:
        assert zf.infolist()[0].date_time == (1980, 1, 1, 0, 0, 0)


@pytest.mark.parametrize("level", [0, 1, 6])
def test_npz_in_many_segments_loads_as_the_stack_with_its_crc(tmp_path: Path, level: int) -> None:
    # Blobs (most segments of a slice empty, so the shared zero segment is used), -1 pixels,
    # an empty slice, segments that do not divide the image, both one and two threads.
    from sam_deblur_cli.masks.groups_npz import write_groups

    labels = labels_from_segmask(result_from_maskset(blob_maskset(20)).segmask) - 1
    labels[labels == 3] = -1
    for workers in (1, 2):
        path = tmp_path / f"g{workers}.npz"
        with path.open("wb") as handle:
            write_groups(handle, labels, level=level, chunk=97, workers=workers)
        with zipfile.ZipFile(path) as archive:
            assert archive.testzip() is None  # the combined CRC-32 is the member's
            [info] = archive.infolist()  # level 0: deflate's stored blocks, still deflate
            assert info.compress_type == zipfile.ZIP_DEFLATED
        with np.load(path) as data:
            np.testing.assert_array_equal(data["masks"], groups_from_labels(labels))


def test_crc32_combine_is_zlibs() -> None:
    import zlib

    from sam_deblur_cli.masks.groups_npz import crc32_combine

    rng = np.random.default_rng(0)
    for n in (0, 1, 97, 4096, 100_003):
        a, b = rng.bytes(1 + n // 3), rng.bytes(n)
        assert crc32_combine(zlib.crc32(a), zlib.crc32(b), n) == zlib.crc32(a + b)


def test_npz_without_the_masks_key_is_a_mask_error(tmp_path: Path) -> None:
    np.savez(tmp_path / "x.npz", other=np.zeros((1, 2, 2), dtype=bool))
    with pytest.raises(MaskError, match="no 'masks' array"):
        read_groups_npz(tmp_path / "x.npz")


def test_load_mask_file_reads_a_segmask_png(tmp_path: Path) -> None:
    result = result_from_maskset(blob_maskset())
    assert result.segmask is not None
    path = write_segmask_png(tmp_path / "s.png", result.segmask)
    loaded = load_mask_file(path, SHAPE)
    np.testing.assert_array_equal(loaded.segmask, result.segmask)
    np.testing.assert_array_equal(loaded.guide("labels"), result.labels)
    assert loaded.groups == result.groups and loaded.maskset is None


@pytest.mark.parametrize("suffix", [".png", ".npz"])
def test_a_mask_file_of_another_size_is_a_mask_error_naming_both(
    tmp_path: Path, suffix: str
) -> None:
    result = result_from_maskset(blob_maskset())
    assert result.segmask is not None
    path = tmp_path / f"m{suffix}"
    if suffix == ".png":
        write_segmask_png(path, result.segmask)
    else:
        write_groups_npz(path, result.labels)
    with pytest.raises(MaskError, match=r"is 53x37 pixels but the image is 54x37"):
        load_mask_file(path, (37, 54))


def rle_edge_cases() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    first = np.zeros((5, 7), dtype=bool)
    first[0, 0] = True
    noisy = rng.random((40, 33)) < 0.5  # many short runs: negative deltas
    tall = np.zeros((300, 4), dtype=bool)
    tall[1:299, 1] = True  # runs far above 31: multi-character numbers
    return [
        np.zeros((4, 6), dtype=bool),
        np.ones((4, 6), dtype=bool),
        first,
        noisy,
        tall,
        *blob_maskset(6).iter_masks(),
    ]


@pytest.mark.parametrize("mask", rle_edge_cases())
def test_our_rle_matches_pycocotools_string_and_decode(mask: np.ndarray) -> None:
    reference = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    text = encode_rle_string(rle_counts(mask))
    assert text == reference["counts"].decode()
    decoded = coco_mask.decode({"size": list(mask.shape), "counts": text.encode()})
    np.testing.assert_array_equal(decoded.astype(bool), mask)
    assert sum(decode_rle_string(text)) == mask.size


def test_coco_json_decodes_with_pycocotools_and_reads_back(tmp_path: Path) -> None:
    maskset = blob_maskset()
    path = write_coco_json(tmp_path / "a_masks.json", maskset)
    annotations = json.loads(path.read_text())
    assert len(annotations) == len(maskset)
    for ann, mask, rec in zip(annotations, maskset.iter_masks(), maskset.records, strict=True):
        seg = ann["segmentation"]
        assert seg["size"] == list(SHAPE)
        rle = {"size": seg["size"], "counts": seg["counts"].encode()}
        np.testing.assert_array_equal(coco_mask.decode(rle).astype(bool), mask)
        assert ann["area"] == rec.area and ann["bbox"] == list(rec.bbox)
        assert ann["point_coords"] == [list(rec.point_coords)]
    back = read_coco_json(path)
    assert back.records == maskset.records
    for got, want in zip(back.iter_masks(), maskset.iter_masks(), strict=True):
        np.testing.assert_array_equal(got, want)


def amg_metadata(maskset: ListMaskSet) -> str:
    """segment-anything scripts/amg.py's metadata.csv, from the dicts generate() returns."""
    lines = [
        "id,area,bbox_x0,bbox_y0,bbox_w,bbox_h,point_input_x,point_input_y,predicted_iou,"
        "stability_score,crop_box_x0,crop_box_y0,crop_box_w,crop_box_h"
    ]
    for i, rec in enumerate(maskset.records):
        ann: dict[str, Any] = {
            "area": rec.area,
            "bbox": list(rec.bbox),
            "point_coords": [list(rec.point_coords)],
            "predicted_iou": rec.predicted_iou,
            "stability_score": rec.stability_score,
            "crop_box": list(rec.crop_box),
        }
        row = [str(i), str(ann["area"]), *[str(x) for x in ann["bbox"]]]
        row += [str(x) for x in ann["point_coords"][0]]
        row += [str(ann["predicted_iou"]), str(ann["stability_score"])]
        row += [str(x) for x in ann["crop_box"]]
        lines.append(",".join(row))
    return "\n".join(lines)


def test_mask_folder_matches_segment_anything_amg_script(tmp_path: Path) -> None:
    maskset = blob_maskset()
    folder = write_mask_folder(tmp_path / "a", maskset)
    assert (folder / "metadata.csv").read_text() == amg_metadata(maskset)
    assert amg_metadata(maskset).splitlines()[0] == METADATA_HEADER
    for i, mask in enumerate(maskset.iter_masks()):
        with Image.open(folder / f"{i}.png") as image:
            assert image.mode == "L"
            pixels = np.asarray(image)
        np.testing.assert_array_equal(pixels, np.where(mask, 255, 0))
    back = read_mask_folder(folder)
    assert back.records == maskset.records


def test_rewriting_a_mask_folder_leaves_no_stale_masks(tmp_path: Path) -> None:
    write_mask_folder(tmp_path / "a", blob_maskset(12))
    write_mask_folder(tmp_path / "a", blob_maskset(3, seed=1))
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "0.png", "1.png", "2.png", "metadata.csv",
    ]  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_overlay_tints_groups_keeps_uncovered_pixels_and_draws_boundaries() -> None:
    rgb = np.full((6, 8, 3), 100, dtype=np.uint8)
    segmask = np.zeros((6, 8), dtype=np.uint8)
    segmask[:, 4:] = 2
    segmask[4:, 4:] = 6
    labels = labels_from_segmask(segmask)
    out = render_overlay(rgb, labels, plain_label=0)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, :3], 100)  # group of gray 0: untouched
    np.testing.assert_array_equal(out[:, 3], 255)  # boundary with the right half
    np.testing.assert_array_equal(out[3, 4:], 255)  # boundary between the two right groups
    top, bottom = out[0, 6], out[5, 6]
    assert not (top == 100).all() and not (top == bottom).all()


@pytest.mark.parametrize("band_rows", [1, 5, 256])
def test_overlay_in_bands_equals_the_whole_image_blend(band_rows: int) -> None:
    # Whole-image arithmetic, as the overlay was first written: the bands must not change it.
    rng = np.random.default_rng(band_rows)
    rgb = rng.integers(0, 256, (*SHAPE, 3), dtype=np.uint8)
    segmask = result_from_maskset(blob_maskset()).segmask
    assert segmask is not None
    labels = labels_from_segmask(segmask)
    labels[rng.random(SHAPE) < 0.05] = -1
    colours = group_colours(int(labels.max()) + 1).astype(np.float32)
    tinted = (labels >= 0) & (labels != 0)
    expected = rgb.astype(np.float32)
    expected[tinted] = expected[tinted] * 0.6 + colours[labels[tinted]] * 0.4
    expected[_boundaries(labels)] = 255.0
    expected = np.round(expected).astype(np.uint8)
    out = render_overlay(rgb, labels, plain_label=0, alpha=0.4, band_rows=band_rows)
    np.testing.assert_array_equal(out, expected)


def test_overlay_png_is_written_at_image_size(tmp_path: Path) -> None:
    maskset = blob_maskset()
    rgb = np.random.default_rng(0).integers(0, 256, (*SHAPE, 3), dtype=np.uint8)
    path = write_overlay_png(tmp_path / "o.png", rgb, result_from_maskset(maskset))
    with Image.open(path) as image:
        assert (image.mode, image.size) == ("RGB", (SHAPE[1], SHAPE[0]))
        assert not np.array_equal(np.asarray(image), rgb)


def test_mask_result_guides() -> None:
    result = result_from_maskset(blob_maskset())
    assert isinstance(result, MaskResult)
    assert result.guide("none") is None
    assert result.guide("segmask") is result.segmask
    assert result.guide("labels") is result.labels
    assert result.count == 12 and result.shape == SHAPE


def test_a_mask_folder_in_a_missing_folder_is_an_image_write_error(tmp_path: Path) -> None:
    with pytest.raises(ImageWriteError, match="Could not write"):
        write_mask_folder(tmp_path / "missing" / "a", blob_maskset(2))
