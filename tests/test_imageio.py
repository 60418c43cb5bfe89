"""imageio: real image files made from real photos, read and written back."""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import struct
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from broken_inputs import png_bytes, write_broken_inputs
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image, ImageCms, ImageOps, JpegImagePlugin
from skimage import color, data

from sam_deblur_cli import imageio
from sam_deblur_cli.errors import ImageReadError, ImageWriteError, OutOfSpaceError, UsageError
from sam_deblur_cli.imageio import (
    Picture,
    is_image_path,
    output_format_for,
    picture_with,
    read_image,
    to_uint8,
    write_image,
)
from sam_deblur_cli.imageio import formats as image_formats

CAT = data.chelsea()[::6, ::6][:40, :56].copy()  # 40 x 56: not square, so rotations show
ASTRONAUT = data.astronaut()[::16, ::16].copy()  # 32 x 32
COFFEE = data.coffee()[::10, ::10].copy()  # 40 x 60
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
ORIENTATION, MAKE, EXIF_IFD, DATE_TAKEN = 0x0112, 0x010F, 0x8769, 0x9003


def _save(path: Path, pixels: np.ndarray, **options: Any) -> Path:
    Image.fromarray(pixels).save(path, **options)
    return path


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    exif[MAKE] = "Sam Camera Co"
    exif.get_ifd(EXIF_IFD)[DATE_TAKEN] = "2024:04:14 10:20:30"
    return exif


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cv2_rgb(path: Path) -> np.ndarray:
    """What OpenCV (an independent decoder) finds in the file: RGB(A) order, native dtype."""
    array = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)
    assert array is not None, f"OpenCV cannot read {path}"
    if array.ndim == 3:
        array = array[:, :, np.array([2, 1, 0, 3][: array.shape[2]])]
    return np.asarray(array)


def _wide(pixels: np.ndarray) -> np.ndarray:
    """8-bit photo -> 16-bit values whose low byte carries information of its own."""
    ramp = np.arange(pixels.size, dtype=np.uint16).reshape(pixels.shape) % 251
    return pixels.astype(np.uint16) * 256 + ramp


# ----------------------------------------------------------------------------- orientation


@pytest.mark.parametrize("orientation", range(1, 9))
def test_each_exif_orientation_shows_the_pixels_pillow_would_show(
    tmp_path: Path, orientation: int
) -> None:
    path = _save(tmp_path / "cat.jpg", CAT, quality=92, exif=_exif(orientation).tobytes())
    picture = read_image(path)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)))
    assert picture.rgb.shape == expected.shape
    assert np.array_equal(to_uint8(picture.rgb), expected)
    assert picture.rgb.shape[:2] == ((56, 40) if orientation >= 5 else (40, 56))
    assert picture.exif is not None
    carried = Image.Exif()
    carried.load(picture.exif)
    assert carried[ORIENTATION] == 1
    assert carried[MAKE] == "Sam Camera Co"


@pytest.mark.parametrize("depth", [8, 16])
def test_orientation_6_turns_the_stored_image_clockwise(tmp_path: Path, depth: int) -> None:
    stored = CAT if depth == 8 else _wide(CAT)
    tiff = _exif(6).tobytes()[6:]  # eXIf holds the TIFF structure without the APP1 prefix
    path = tmp_path / "turned.png"
    path.write_bytes(png_bytes(stored, 2, chunks=((b"eXIf", tiff),)))
    picture = read_image(path)
    top = 255 if depth == 8 else 65535
    shown = np.rint(picture.rgb * top).astype(stored.dtype)
    assert picture.bit_depth == depth
    # Orientation 6: the stored left column is the displayed top row, read bottom-up.
    assert np.array_equal(shown[0], stored[::-1, 0])
    assert np.array_equal(shown, np.rot90(stored, k=-1))


def test_orientation_swaps_the_dpi_with_the_axes(tmp_path: Path) -> None:
    path = _save(tmp_path / "scan.jpg", CAT, dpi=(300, 150), exif=_exif(6).tobytes())
    assert read_image(path).dpi == (150.0, 300.0)
    out = write_image(tmp_path / "out.png", read_image(path))
    assert np.allclose(
        Image.open(out).info["dpi"], (150, 300), atol=0.05
    )  # PNG stores dots per metre


# ------------------------------------------------------------------------------- bit depth


@pytest.mark.parametrize("suffix", [".png", ".tif"])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_sixteen_bit_round_trip_keeps_all_sixteen_bits(
    tmp_path: Path, suffix: str, channels: int
) -> None:
    photo = np.dstack([COFFEE, COFFEE[:, :, 1]])[:, :, : max(channels, 1)]
    stored = _wide(photo if channels > 1 else COFFEE[:, :, 1])
    assert len(np.unique(stored & 0xFF)) > 200  # the low byte matters
    source = tmp_path / f"in{suffix}"
    bgr = stored if channels == 1 else stored[:, :, [2, 1, 0, 3][:channels]]
    assert cv2.imwrite(str(source), bgr)
    picture = read_image(source)
    assert picture.bit_depth == 16
    assert picture.gray == (channels == 1)
    assert (picture.alpha is not None) == (channels == 4)
    out = write_image(tmp_path / f"out{suffix}", picture)
    written = _cv2_rgb(out)
    assert written.dtype == np.uint16
    assert np.array_equal(written, stored)


def test_sixteen_bit_gray_with_alpha_is_read_exactly_and_written_as_gray_rgba(
    tmp_path: Path,
) -> None:
    stored = _wide(np.dstack([COFFEE[:, :, 0], COFFEE[:, :, 2]]))
    source = tmp_path / "gray_alpha16.png"
    source.write_bytes(png_bytes(stored, 4))
    picture = read_image(source)
    assert (picture.gray, picture.bit_depth, picture.mode) == (True, 16, "LA")
    assert np.array_equal(np.rint(picture.rgb[:, :, 1] * 65535), stored[:, :, 0])
    assert np.array_equal(np.rint(picture.alpha * 65535), stored[:, :, 1])  # type: ignore[operator]
    written = _cv2_rgb(write_image(tmp_path / "out.png", picture))
    assert written.shape[2] == 4
    for channel in range(3):
        assert np.array_equal(written[:, :, channel], stored[:, :, 0])
    assert np.array_equal(written[:, :, 3], stored[:, :, 1])


def test_sixteen_bit_to_jpeg_is_reduced_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = tmp_path / "in.png"
    cv2.imwrite(str(source), _wide(COFFEE)[:, :, ::-1])
    picture = read_image(source)
    with caplog.at_level(logging.WARNING, logger="sam_deblur_cli.imageio"):
        out = write_image(tmp_path / "out.jpg", picture)
    assert "8 bits" in caplog.text
    as_eight_bit = write_image(tmp_path / "eight.jpg", replace(picture, bit_depth=8))
    assert out.read_bytes() == as_eight_bit.read_bytes()
    assert np.abs(np.asarray(Image.open(out)).astype(int) - COFFEE).mean() < 5  # JPEG loss


def test_float_tiff_is_refused_with_advice(tmp_path: Path) -> None:
    path = tmp_path / "hdr.tif"
    Image.fromarray(COFFEE[:, :, 0].astype(np.float32) / 255).save(path)
    with pytest.raises(ImageReadError, match=r"hdr\.tif: .*(floating-point|32-bit).*16-bit"):
        read_image(path)


# ----------------------------------------------------------------------------------- alpha


def _rgba() -> np.ndarray:
    alpha = np.tile(np.linspace(0, 255, COFFEE.shape[1]).astype(np.uint8), (COFFEE.shape[0], 1))
    alpha[:10] = 0  # fully transparent band over real photo colours
    return np.dstack([COFFEE, alpha])


def test_rgba_png_keeps_alpha_byte_for_byte_and_the_rgb_under_it(tmp_path: Path) -> None:
    rgba = _rgba()
    picture = read_image(_save(tmp_path / "in.png", rgba))
    assert picture.mode == "RGBA"
    out = write_image(tmp_path / "out.png", picture)
    written = np.asarray(Image.open(out))
    assert Image.open(out).mode == "RGBA"
    assert np.array_equal(written[:, :, 3], rgba[:, :, 3])
    assert np.array_equal(written[:, :, :3], rgba[:, :, :3])  # hidden colours too


def test_deblurred_rgb_is_recombined_with_the_original_alpha(tmp_path: Path) -> None:
    rgba = _rgba()
    picture = read_image(_save(tmp_path / "in.png", rgba))
    restored = picture_with(1.0 - picture.rgb, like=picture)
    written = np.asarray(Image.open(write_image(tmp_path / "out.webp", restored, lossless=True)))
    assert np.array_equal(written[:, :, 3], rgba[:, :, 3])
    assert np.array_equal(written[:, :, :3], 255 - rgba[:, :, :3])


def test_jpeg_output_drops_alpha_with_a_warning_and_keeps_the_colours(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rgba = _rgba()
    picture = read_image(_save(tmp_path / "in.png", rgba))
    with caplog.at_level(logging.WARNING, logger="sam_deblur_cli.imageio"):
        out = write_image(tmp_path / "out.jpg", picture)
    assert "alpha" in caplog.text
    written = np.asarray(Image.open(out)).astype(int)
    hidden = rgba[:10, :, :3].astype(int)
    assert hidden.mean() > 60  # the photo is not dark there...
    assert np.abs(written[:10] - hidden).mean() < 4  # ...and is not turned black


def test_palette_with_transparency_becomes_rgba(tmp_path: Path) -> None:
    palette = Image.fromarray(ASTRONAUT).quantize(16)
    palette.info["transparency"] = 0
    path = tmp_path / "logo.png"
    palette.save(path, transparency=0)
    picture = read_image(path)
    expected = np.asarray(Image.open(path).convert("RGBA"))
    assert picture.mode == "RGBA"
    assert np.array_equal(to_uint8(picture.alpha), expected[:, :, 3])  # type: ignore[arg-type]
    assert np.array_equal(to_uint8(picture.rgb), expected[:, :, :3])
    assert (expected[:, :, 3] == 0).any()


@pytest.mark.parametrize("gray", [False, True])
def test_png_colour_key_transparency_becomes_alpha(tmp_path: Path, gray: bool) -> None:
    pixels = np.asarray(Image.fromarray(CAT).convert("L")) if gray else CAT
    key = int(pixels[0, 0]) if gray else tuple(int(v) for v in pixels[0, 0])
    path = _save(tmp_path / "keyed.png", pixels, transparency=key)
    picture = read_image(path)
    assert picture.mode == ("LA" if gray else "RGBA")
    assert picture.alpha is not None and picture.alpha[0, 0] == 0 and picture.alpha.max() == 1
    written = np.asarray(Image.open(write_image(tmp_path / "out.png", picture)))
    assert np.array_equal(written[:, :, -1], to_uint8(picture.alpha))
    assert np.array_equal(written[:, :, 0], pixels if gray else pixels[:, :, 0])


# ------------------------------------------------------------------------- colour layouts


def test_cmyk_jpeg_reads_as_rgb(tmp_path: Path) -> None:
    path = tmp_path / "print.jpg"
    Image.fromarray(CAT).convert("CMYK").save(path, quality=95)
    assert Image.open(path).mode == "CMYK"
    picture = read_image(path)
    assert (picture.mode, picture.source_format, picture.icc) == ("RGB", "JPEG", None)
    assert np.abs(to_uint8(picture.rgb).astype(int) - CAT).mean() < 3


def _cmyk_profile(grid: int = 9) -> bytes:
    """A small ICC v2 CMYK input profile: an A2B0 lut8 to Lab of the plain model R = (1-C)(1-K).

    Written by hand because no CMYK profile ships with the test dependencies; on a CAT crop
    LittleCMS through it lands within 0.3 levels (mean) of the source RGB.
    """
    axis = np.linspace(0.0, 1.0, grid)
    c, m, y, k = np.meshgrid(axis, axis, axis, axis, indexing="ij")
    rgb = np.stack([(1 - c) * (1 - k), (1 - m) * (1 - k), (1 - y) * (1 - k)], axis=-1)
    bradford_d65_to_d50 = np.array(
        [[1.0478112, 0.0228866, -0.0501270], [0.0295424, 0.9904844, -0.0170491],
         [-0.0092345, 0.0150436, 0.7521316]]
    )  # fmt: skip
    xyz = color.rgb2xyz(rgb.reshape(-1, 1, 3)) @ bradford_d65_to_d50.T
    lab = color.xyz2lab(xyz, illuminant="D50").reshape(-1, 3)
    clut = np.rint(np.column_stack([lab[:, 0] * 2.55, lab[:, 1:] + 128])).clip(0, 255)
    identity = np.arange(256, dtype=np.uint8).tobytes()
    a2b0 = b"mft1" + bytes(4) + bytes([4, 3, grid, 0])
    a2b0 += struct.pack(">9i", 65536, 0, 0, 0, 65536, 0, 0, 0, 65536) + identity * 4
    a2b0 += clut.astype(np.uint8).tobytes() + identity * 3
    d50 = struct.pack(">3i", *(round(v * 65536) for v in (0.9642, 1.0, 0.8249)))
    tags = [(b"wtpt", b"XYZ " + bytes(4) + d50), (b"A2B0", a2b0)]
    offset = 128 + 4 + 12 * len(tags)
    table, body = struct.pack(">I", len(tags)), b""
    for signature, payload in tags:
        table += signature + struct.pack(">II", offset + len(body), len(payload))
        body += payload + bytes(-len(payload) % 4)
    header = struct.pack(
        ">I4sI4s4s4s12s4s", offset + len(body), b"", 0x02100000, b"scnr", b"CMYK", b"Lab ",
        bytes(12), b"acsp",
    )  # fmt: skip
    header = (header + bytes(68 - len(header)) + d50).ljust(128, b"\x00")
    return header + table + body


def test_cmyk_jpeg_with_a_profile_is_converted_through_it_to_srgb(tmp_path: Path) -> None:
    path = tmp_path / "press.jpg"
    Image.fromarray(CAT).convert("CMYK").save(path, quality=95, icc_profile=_cmyk_profile())
    picture = read_image(path)
    assert picture.mode == "RGB"
    assert picture.icc is not None and picture.icc[16:20] == b"RGB "  # tagged: sRGB now
    assert np.abs(to_uint8(picture.rgb).astype(int) - CAT).mean() < 3
    out = write_image(tmp_path / "out.png", picture)
    assert Image.open(out).info["icc_profile"] == picture.icc


def test_cmyk_with_an_unusable_profile_falls_back_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "print.jpg"
    Image.fromarray(CAT).convert("CMYK").save(path, quality=95, icc_profile=SRGB)
    with caplog.at_level(logging.WARNING, logger="sam_deblur_cli.imageio"):
        picture = read_image(path)
    assert "profile" in caplog.text
    assert picture.mode == "RGB"
    assert np.abs(to_uint8(picture.rgb).astype(int) - CAT).mean() < 3


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif"])
def test_grayscale_in_grayscale_out(tmp_path: Path, suffix: str) -> None:
    gray = np.asarray(Image.fromarray(CAT).convert("L"))
    source = _save(tmp_path / f"in{suffix}", gray)
    picture = read_image(source)
    assert picture.gray and picture.mode == "L"
    assert np.array_equal(picture.rgb[:, :, 0], picture.rgb[:, :, 2])
    out = write_image(tmp_path / f"out{suffix}", picture)
    assert Image.open(out).mode == "L"
    if suffix != ".jpg":
        assert np.array_equal(np.asarray(Image.open(out)), gray)


def test_gray_output_is_the_luma_of_the_restored_rgb(tmp_path: Path) -> None:
    gray = np.asarray(Image.fromarray(CAT).convert("L"))
    picture = read_image(_save(tmp_path / "in.png", gray))
    colour = picture_with(CAT.astype(np.float32) / 255, like=picture)
    written = np.asarray(Image.open(write_image(tmp_path / "out.png", colour))).astype(int)
    assert np.abs(written - gray).max() <= 1  # Pillow's L is Rec. 601 luma too


def test_gray_to_webp_is_stored_as_neutral_rgb(tmp_path: Path) -> None:
    gray = np.asarray(Image.fromarray(CAT).convert("L"))
    picture = read_image(_save(tmp_path / "in.png", gray))
    written = np.asarray(Image.open(write_image(tmp_path / "o.webp", picture, lossless=True)))
    assert written.shape == (*gray.shape, 3)
    assert all(np.array_equal(written[:, :, c], gray) for c in range(3))


# ------------------------------------------------------------------------------- metadata


def _picture_with_icc(tmp_path: Path, kind: str) -> Picture:
    if kind == "png16":
        path = tmp_path / "in.png"
        path.write_bytes(png_bytes(_wide(COFFEE), 2, chunks=((b"iCCP", _iccp(SRGB)),)))
    else:
        path = _save(tmp_path / "in.png", COFFEE, icc_profile=SRGB)
    return read_image(path)


def _iccp(profile: bytes) -> bytes:
    import zlib

    return b"sRGB\x00\x00" + zlib.compress(profile)


@pytest.mark.parametrize("source", ["png8", "png16"])
@pytest.mark.parametrize("suffix", [".jpg", ".png", ".tif", ".webp"])
def test_icc_profile_is_carried(tmp_path: Path, source: str, suffix: str) -> None:
    picture = _picture_with_icc(tmp_path, source)
    assert picture.icc == SRGB
    out = write_image(tmp_path / f"out{suffix}", picture)
    assert Image.open(out).info.get("icc_profile") == SRGB
    if source == "png16" and suffix in (".png", ".tif"):
        assert np.array_equal(_cv2_rgb(out), _wide(COFFEE))  # splicing kept the pixels


def test_a_gray_profile_is_not_attached_to_rgb_pixels(tmp_path: Path) -> None:
    gray_icc = bytearray(SRGB)
    gray_icc[16:20] = b"GRAY"
    picture = Picture(rgb=COFFEE.astype(np.float32) / 255, icc=bytes(gray_icc))
    out = write_image(tmp_path / "out.png", picture)
    assert "icc_profile" not in Image.open(out).info


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp", ".tif", ".png16"])
def test_exif_is_carried_with_orientation_reset(tmp_path: Path, suffix: str) -> None:
    source = _save(tmp_path / "in.jpg", CAT, exif=_exif(8).tobytes())
    picture = read_image(source)
    if suffix == ".png16":
        picture = replace(picture, bit_depth=16)
        suffix = ".png"
    out = write_image(tmp_path / f"out{suffix}", picture)
    exif = Image.open(out).getexif()
    assert exif.get(ORIENTATION, 1) == 1
    assert exif[MAKE] == "Sam Camera Co"
    if suffix != ".tif":  # libtiff cannot write the Exif sub-IFD: TIFFs keep IFD0 tags only
        assert exif.get_ifd(EXIF_IFD)[DATE_TAKEN] == "2024:04:14 10:20:30"
    reopened = read_image(out)
    assert reopened.rgb.shape == picture.rgb.shape  # not turned a second time


def test_exif_patch_touches_only_orientation_and_the_thumbnail_link(tmp_path: Path) -> None:
    source = _save(tmp_path / "in.jpg", CAT, exif=_exif(3).tobytes())
    original = Image.open(source).info["exif"]
    patched = read_image(source).exif
    assert patched is not None and len(patched) == len(original)
    changed = [i for i, (a, b) in enumerate(zip(original, patched, strict=True)) if a != b]
    assert 1 <= len(changed) <= 5  # orientation short (+ the IFD1 offset when present)


@pytest.mark.parametrize("order", [b"MM", b"II"])
def test_orientation_stored_as_long_is_applied_and_reset(tmp_path: Path, order: bytes) -> None:
    fmt = ">" if order == b"MM" else "<"
    # One IFD0 entry, Orientation = 6 typed LONG (4) where the standard says SHORT.
    tiff = order + struct.pack(fmt + "HIH", 42, 8, 1) + struct.pack(fmt + "HHII", 0x0112, 4, 1, 6)
    source = _save(tmp_path / "in.jpg", CAT, exif=b"Exif\x00\x00" + tiff + b"\x00" * 4)
    picture = read_image(source)
    assert picture.rgb.shape[:2] == (56, 40)
    out = write_image(tmp_path / "out.jpg", picture)
    assert Image.open(out).getexif()[ORIENTATION] == 1


@pytest.mark.filterwarnings("ignore:Metadata Warning:UserWarning")  # Pillow's own complaint
def test_unpatchable_exif_is_dropped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Orientation with a count of 2: cannot be reset safely, so the block must not travel.
    tiff = b"II" + struct.pack("<HIH", 42, 8, 1) + struct.pack("<HHIHH", 0x0112, 3, 2, 6, 6)
    source = _save(tmp_path / "odd.jpg", CAT, exif=b"Exif\x00\x00" + tiff + b"\x00" * 4)
    with caplog.at_level(logging.WARNING, logger="sam_deblur_cli.imageio"):
        picture = read_image(source)
    assert picture.exif is None
    assert "odd.jpg" in caplog.text and "EXIF" in caplog.text


def test_tiff_descriptive_tags_become_exif(tmp_path: Path) -> None:
    source = tmp_path / "scan.tif"
    Image.fromarray(CAT).save(source, exif=_exif(1).tobytes())  # uncompressed: sub-IFD kept
    picture = read_image(source)
    exif = Image.open(write_image(tmp_path / "out.jpg", picture)).getexif()
    assert exif[MAKE] == "Sam Camera Co"
    assert exif.get_ifd(EXIF_IFD)[DATE_TAKEN] == "2024:04:14 10:20:30"
    assert 0x0111 not in exif  # StripOffsets belonged to the TIFF, not to the photo


def test_exif_too_big_for_jpeg_is_left_out_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    exif = _exif(1)
    exif.get_ifd(EXIF_IFD)[0x927C] = b"maker notes " * 6000  # 72 kB: fits PNG, not a JPEG APP1
    picture = read_image(_save(tmp_path / "in.png", CAT, exif=exif.tobytes()))
    assert picture.exif is not None and len(picture.exif) > 70_000
    with caplog.at_level(logging.WARNING, logger="sam_deblur_cli.imageio"):
        out = write_image(tmp_path / "out.jpg", picture)
    assert "too big for JPEG" in caplog.text
    assert "exif" not in Image.open(out).info
    png = write_image(tmp_path / "out.png", picture)
    assert Image.open(png).getexif()[MAKE] == "Sam Camera Co"


def test_jpeg_is_written_with_full_chroma_and_the_asked_quality(tmp_path: Path) -> None:
    picture = read_image(_save(tmp_path / "in.png", COFFEE))
    best = write_image(tmp_path / "best.jpg", picture)
    small = write_image(tmp_path / "small.jpg", picture, quality=40)
    assert JpegImagePlugin.get_sampling(Image.open(best)) == 0  # 4:4:4
    assert small.stat().st_size < best.stat().st_size
    with pytest.raises(UsageError, match=r"1\.\.100"):
        write_image(tmp_path / "bad.jpg", picture, quality=0)


@pytest.mark.parametrize("fmt", ["WEBP", "TIFF", "MPO"])
def test_multi_frame_files_give_their_first_frame(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, fmt: str
) -> None:
    path = tmp_path / f"frames.{'jpg' if fmt == 'MPO' else fmt.lower()}"
    first, second = Image.fromarray(CAT), Image.fromarray(255 - CAT)
    first.save(path, format=fmt, save_all=True, append_images=[second], lossless=True)
    with caplog.at_level(logging.WARNING, logger="sam_deblur_cli.imageio"):
        picture = read_image(path)
    assert np.abs(to_uint8(picture.rgb).astype(int) - CAT).mean() < 10  # the other is ~100 off
    # A camera MPO (preview or depth frames after the photo) is simply a JPEG to the user.
    assert ("only the first" in caplog.text) == (fmt != "MPO")
    assert picture.source_format == ("JPEG" if fmt == "MPO" else fmt)


# ------------------------------------------------------------------------------ bomb guard


def test_bomb_guard_refuses_from_the_header_and_names_the_override(tmp_path: Path) -> None:
    path = _save(tmp_path / "big.png", COFFEE)
    with pytest.raises(ImageReadError) as caught:
        read_image(path, max_pixels=1000)
    message = str(caught.value)
    assert "big.png" in message and "60 x 40" in message and "--max-pixels 2400" in message
    assert read_image(path, max_pixels=2400).rgb.shape == (40, 60, 3)
    assert read_image(path, max_pixels=None).rgb.shape == (40, 60, 3)
    with pytest.raises(UsageError, match="positive"):
        read_image(path, max_pixels=0)


def test_bomb_header_is_refused_without_decoding(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    # A 60000 x 60000 header over a single real pixel: decoding it would need 10 GB.
    path.write_bytes(png_bytes(COFFEE[:1, :1], 2, size=(60_000, 60_000)))
    with pytest.raises(ImageReadError, match=r"60000 x 60000 pixels \(3600\.0 MP\)"):
        read_image(path)


def test_our_limit_replaces_pillows_without_leaking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # Pillow would refuse 2400 pixels
    path = _save(tmp_path / "in.png", COFFEE)
    assert read_image(path, max_pixels=10_000).rgb.shape == (40, 60, 3)
    assert Image.MAX_IMAGE_PIXELS == 500


# ---------------------------------------------------------------------------- broken files

CORPUS_KINDS = [
    "empty",
    "text_as_jpeg",
    "truncated_jpeg",
    "truncated_png",
    "truncated_png16",
    "bad_crc_png",
    "garbage_after_jpeg_header",
    "zero_width_png",
    "bomb_png",
    "unsupported_gif",
    "broken_heic",
    "folder_named_png",
    "missing",
]
EXPECTED_REASON = {
    "empty": "empty",
    "truncated_jpeg": "truncated",
    "truncated_png": "truncated",
    "truncated_png16": "truncated",
    "bad_crc_png": "checksum",
    "zero_width_png": "0 x",
    "bomb_png": "--max-pixels",
    "unsupported_gif": "GIF images are not supported",
    "folder_named_png": "folder",
    "missing": "no such file",
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_broken_inputs(tmp_path_factory.mktemp("broken"))


def test_corpus_has_at_least_ten_kinds(corpus: dict[str, Path]) -> None:
    assert set(CORPUS_KINDS) <= set(corpus)
    assert len(corpus) >= 10


@pytest.mark.parametrize("kind", CORPUS_KINDS)
def test_each_broken_input_gives_one_line_naming_the_file(
    corpus: dict[str, Path], kind: str
) -> None:
    path = corpus[kind]
    with pytest.raises(ImageReadError) as caught:
        read_image(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert "\n" not in message and len(message) < 300
    assert "Traceback" not in message
    assert EXPECTED_REASON.get(kind, "") in message
    assert caught.value.exit_code == 1


def test_permission_denied_is_reported_plainly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _save(tmp_path / "locked.png", COFFEE)

    def refuse(self: Path) -> bytes:
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", refuse)  # root ignores chmod, so deny it here
    with pytest.raises(ImageReadError, match=r"locked\.png: permission denied"):
        read_image(path)


def test_missing_heif_support_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "phone.heic"
    path.write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64)
    monkeypatch.setattr(image_formats, "_heif_registered", False)
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # as if not installed
    with pytest.raises(ImageReadError, match=r"phone\.heic.*pip install pillow-heif"):
        read_image(path)
    with pytest.raises(ImageWriteError, match="pillow-heif"):
        write_image(tmp_path / "out.heic", Picture(rgb=np.zeros((2, 2, 3), np.float32)))


def test_heic_round_trip_when_pillow_heif_is_installed(tmp_path: Path) -> None:
    pytest.importorskip("pillow_heif")
    source = _save(tmp_path / "in.jpg", COFFEE, quality=98, exif=_exif(1).tobytes())
    picture = read_image(source)
    out = write_image(tmp_path / "out.heic", picture, quality=95)
    again = read_image(out)
    assert again.source_format == "HEIF" and again.rgb.shape == picture.rgb.shape
    assert Image.open(out).getexif()[MAKE] == "Sam Camera Co"
    assert np.abs(to_uint8(again.rgb).astype(int) - COFFEE).mean() < 6


# -------------------------------------------------------------------------- atomic writes


def test_input_is_unchanged_after_reading_and_writing_beside_it(tmp_path: Path) -> None:
    source = _save(tmp_path / "photo.jpg", CAT, exif=_exif(6).tobytes(), icc_profile=SRGB)
    digest, mtime = _sha(source), source.stat().st_mtime_ns
    picture = read_image(source)
    write_image(tmp_path / "photo_deblurred.jpg", picture)
    write_image(tmp_path / "photo.png", picture)
    assert (_sha(source), source.stat().st_mtime_ns) == (digest, mtime)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "photo.jpg",
        "photo.png",
        "photo_deblurred.jpg",
    ]


@pytest.mark.parametrize("alias", ["same", "relative", "hardlink", "symlink", "protect"])
def test_writing_over_an_input_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, alias: str
) -> None:
    source = _save(tmp_path / "photo.png", COFFEE)
    digest = _sha(source)
    picture = read_image(source)
    target = {
        "same": source,
        "relative": Path("sub/../photo.png"),
        "hardlink": tmp_path / "link.png",
        "symlink": tmp_path / "sym.png",
        "protect": tmp_path / "other.png",
    }[alias]
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    if alias == "hardlink":
        os.link(source, target)
    elif alias == "symlink":
        target.symlink_to(source)
    protect = [tmp_path / "other.png"] if alias == "protect" else []
    if alias == "protect":
        _save(target, ASTRONAUT)
        picture = Picture(rgb=picture.rgb)  # no source path: only `protect` guards it
    with pytest.raises(ImageWriteError, match="never overwritten"):
        write_image(target, picture, protect=protect)
    assert _sha(source) == digest


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize(
    ("failure", "expected", "reason"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), OutOfSpaceError, "No space left"),
        (OSError(errno.EIO, "Input/output error"), ImageWriteError, "Input/output error"),
        (None, KeyboardInterrupt, ""),
    ],
)
def test_failure_mid_write_leaves_no_partial_file(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    failure: OSError | None,
    expected: type[BaseException],
    reason: str,
) -> None:
    picture = read_image(_save(tmp_path / "in.png", COFFEE))
    out = _save(tmp_path / "out.jpg", ASTRONAUT)  # an older result that must survive
    digest, before = _sha(out), _listing(tmp_path)

    def save_half_then_fail(
        self: Image.Image, fp: io.BufferedWriter, *a: object, **k: object
    ) -> None:
        fp.write(b"\xff\xd8\xff\xe0 half a JPEG")
        raise failure if failure is not None else KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", save_half_then_fail)
    with pytest.raises(expected) as caught:
        write_image(out, picture)
    assert reason in str(caught.value)
    assert _listing(tmp_path) == before
    assert _sha(out) == digest


def test_sixteen_bit_write_failure_at_fsync_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "in.png"
    cv2.imwrite(str(source), _wide(COFFEE))
    picture = read_image(source)
    before = _listing(tmp_path)

    def fail(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(ImageWriteError, match=r"out\.png: could not be written"):
        write_image(tmp_path / "out.png", picture)
    assert _listing(tmp_path) == before


def test_write_creates_folders_with_ordinary_permissions(tmp_path: Path) -> None:
    picture = read_image(_save(tmp_path / "in.png", COFFEE))
    out = write_image(tmp_path / "a" / "b" / "out.tif", picture)
    umask = os.umask(0o022)
    os.umask(umask)
    assert out.is_file() and (out.stat().st_mode & 0o777) == (0o666 & ~umask)
    assert np.array_equal(np.asarray(Image.open(out)), COFFEE)


def test_writing_into_a_folder_name_is_refused(tmp_path: Path) -> None:
    (tmp_path / "out.png").mkdir()
    with pytest.raises(ImageWriteError, match="is a folder"):
        write_image(tmp_path / "out.png", Picture(rgb=np.zeros((2, 2, 3), np.float32)))


# ------------------------------------------------------------------------------- helpers


def test_output_format_and_suffix_helpers() -> None:
    assert output_format_for("x/photo.JPG") == "JPEG"
    assert output_format_for("photo.tiff") == "TIFF"
    assert output_format_for("photo.jpg", "png") == "PNG"
    assert output_format_for("photo", "heic") == "HEIF"
    assert imageio.suffix_for_format("jpeg") == ".jpg"
    with pytest.raises(UsageError, match=r"photo\.gif"):
        output_format_for("photo.gif")
    with pytest.raises(UsageError, match="'gif'"):
        output_format_for("photo.png", "gif")
    assert is_image_path("a/B.HEIC") and is_image_path("c.webp")
    assert not is_image_path("notes.txt") and not is_image_path("archive.jpg.zip")
    assert not is_image_path("card/._IMG_0001.JPG")


def test_to_uint8_rounds_clamps_and_zeroes_nan() -> None:
    values = np.array([-0.5, 0.0, 0.5 / 255, 1.49 / 255, 0.5, 1.0, 7.0, np.nan], np.float32)
    assert to_uint8(values).tolist() == [0, 0, 0, 1, 128, 255, 255, 0]
    assert imageio.to_uint16(np.array([0.5, 2.0], np.float32)).tolist() == [32768, 65535]


def test_picture_with_keeps_everything_but_the_pixels(tmp_path: Path) -> None:
    source = _save(tmp_path / "in.png", _rgba(), icc_profile=SRGB, dpi=(72, 72))
    picture = read_image(source)
    restored = picture_with(np.zeros_like(picture.rgb), like=picture)
    assert restored.alpha is picture.alpha and restored.icc == SRGB
    assert (restored.source_path, restored.bit_depth) == (source, 8)
    assert restored.dpi == pytest.approx((72.0, 72.0), abs=0.05)
    with pytest.raises(ValueError, match="original"):
        picture_with(picture.rgb[:10], like=picture)


@pytest.mark.subprocess
def test_imageio_import_stays_light() -> None:
    code = (
        "import sys, sam_deblur_cli.imageio\n"
        "heavy = {'torch', 'cv2', 'numpy', 'PIL'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------ properties

SHAPES = st.tuples(st.integers(1, 9), st.integers(1, 9))


@settings(max_examples=30, deadline=None)
@given(
    shape=SHAPES,
    channels=st.sampled_from([1, 2, 3, 4]),
    depth=st.sampled_from([8, 16]),
    seed=st.integers(0, 2**32 - 1),
)
def test_png_round_trip_is_exact(
    tmp_path_factory: pytest.TempPathFactory, shape: tuple[int, int], channels: int,
    depth: int, seed: int,
) -> None:  # fmt: skip
    dtype = np.uint8 if depth == 8 else np.uint16
    stored = np.random.default_rng(seed).integers(0, np.iinfo(dtype).max + 1, (*shape, channels))
    stored = stored.astype(dtype)
    folder = tmp_path_factory.mktemp("prop")
    source = folder / "in.png"
    source.write_bytes(png_bytes(stored, {1: 0, 2: 4, 3: 2, 4: 6}[channels]))
    picture = read_image(source)
    assert picture.rgb.shape == (*shape, 3) and picture.bit_depth == depth
    assert picture.gray == (channels <= 2) and (picture.alpha is not None) == (channels % 2 == 0)
    written = _cv2_rgb(write_image(folder / "out.png", picture))
    if written.ndim == 2:
        written = written[:, :, None]
    if channels == 2 and depth == 16:  # written as gray RGBA: see the gray + alpha test
        written = written[:, :, [0, 3]]
    elif channels == 2:
        written = np.asarray(Image.open(folder / "out.png"))  # OpenCV reads LA as BGRA
    assert written.dtype == dtype
    assert np.array_equal(written.reshape(stored.shape), stored)


@settings(max_examples=15, deadline=None)
@given(pixels=arrays(np.uint8, st.tuples(st.integers(1, 8), st.integers(1, 8), st.just(4))))
def test_rgba_through_lossless_webp_and_tiff_is_exact(
    tmp_path_factory: pytest.TempPathFactory, pixels: np.ndarray
) -> None:
    folder = tmp_path_factory.mktemp("rgba")
    picture = read_image(_save(folder / "in.png", pixels))
    for name in ("out.webp", "out.tif"):
        written = Image.open(write_image(folder / name, picture, lossless=True))
        # libwebp leaves out an all-opaque alpha plane; reading it back as RGBA restores it.
        assert np.array_equal(np.asarray(written.convert("RGBA")), pixels)
