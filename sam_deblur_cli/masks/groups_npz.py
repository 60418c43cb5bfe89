"""The upstream groups ``.npz`` written straight from a label map, with work only where groups are.

The file is what ``np.savez_compressed(file, masks=groups_from_labels(labels))`` stores: a
zip with one deflated, zip64 member ``masks.npy`` holding a bool G x 1 x H x W array (its
bytes, CRC and npy header are the same; only the deflate stream differs). Each slice is
almost all zeros, so the stream is cut into *segments* of ``CHUNK`` pixels of one slice, each
compressed on its own and ended with a sync flush (byte-aligned, so segments concatenate
into one valid deflate stream, as pigz does):

- a segment where the slice's group has no pixel is the same zeros every time: compressed
  once per file (at level 9, as it costs nothing then) and reused;
- the others are made from the label map (``labels == g`` on those pixels only) and
  compressed in a small thread pool, one slice per task (numpy and zlib release the GIL).

The CRC-32 of the whole member is combined from per-segment CRCs (zlib's crc32_combine,
written out here because Python's zlib lacks it). The zip headers are written by hand with
the layout ``zipfile`` itself writes for a zip64 member, stamped 1980-01-01 (reproducible
bytes, as reproducible-build tools stamp archives).

Pure numpy + zlib; imported on first use by ``formats``.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import IO

import numpy as np

from sam_deblur_cli.masks.encode import count_groups

LEVEL = 1  # zlib level of the groups file (see README, mask benchmarks: level 0 / 1 / 6)
CHUNK = 1 << 18  # pixels per segment: one slice is cut into H*W / CHUNK of them
MEMBER = b"masks.npy"
_SYNC = zlib.Z_SYNC_FLUSH
_U32 = 0xFFFFFFFF


def write_groups(
    handle: IO[bytes],
    labels: np.ndarray,
    *,
    level: int = LEVEL,
    chunk: int = CHUNK,
    workers: int | None = None,
) -> None:
    """Write the groups file of ``labels`` (int H x W, groups 0..G-1, -1 in no group) to
    ``handle`` (a new binary file, written from its start). ``workers``: compressing
    threads (default: the CPUs this process may use, at most 4)."""
    count = count_groups(labels)
    height, width = labels.shape
    header = io.BytesIO()
    shape = (count, 1, height, width)
    descr = np.lib.format.dtype_to_descr(np.dtype(np.bool_))
    np.lib.format.write_array_header_1_0(
        header, {"descr": descr, "fortran_order": False, "shape": shape}
    )
    narrow = np.int16 if count < np.iinfo(np.int16).max else np.int64
    flat = np.ascontiguousarray(labels, dtype=narrow).reshape(-1)
    plan = _SlicePlan(flat, count, chunk, level)
    if workers is None:
        workers = min(4, _usable_cpus())
    stamp, start = _dos_time(), handle.tell()
    handle.write(_local_header(stamp, 0, 0, 0))  # sizes and CRC filled in at the end
    stream = _Stream(handle)
    npy_header = header.getvalue()
    stream.write(_compress(npy_header, level), zlib.crc32(npy_header), len(npy_header))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for piece in pool.map(plan.slice, range(count)):
            stream.write(*piece)
    stream.write(zlib.compressobj(level, zlib.DEFLATED, -15).flush(), 0, 0)  # final block
    end = handle.tell()
    handle.seek(start)
    handle.write(_local_header(stamp, stream.crc, stream.packed, stream.raw))
    handle.seek(end)
    _central_directory(handle, stamp, start, stream.crc, stream.packed, stream.raw)


def _usable_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):  # Linux: the CPUs this process may run on
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


class _Stream:
    """The member's compressed bytes as they are written, with its running CRC and sizes."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle
        self.crc = self.raw = self.packed = 0

    def write(self, data: bytes, crc: int, length: int) -> None:
        self.handle.write(data)
        self.crc = crc32_combine(self.crc, crc, length)
        self.raw += length
        self.packed += len(data)


class _SlicePlan:
    """Which segments of each slice hold pixels of its group, and the shared zero segments."""

    def __init__(self, flat: np.ndarray, count: int, chunk: int, level: int) -> None:
        self.flat, self.level = flat, level
        self.bounds = [*range(0, flat.size, chunk), flat.size]
        # present[j, g]: group g has a pixel in segment j (column 0: uncovered, -1)
        present = [
            np.bincount(flat[a:b] + 1, minlength=count + 1) > 0
            for a, b in zip(self.bounds[:-1], self.bounds[1:], strict=True)
        ]
        self.present = np.stack(present)[:, 1:] if present else np.zeros((0, count), bool)
        self.zeros = {n: _zero_segment(n, level) for n in {b - a for a, b in self._spans()}}

    def _spans(self) -> Iterator[tuple[int, int]]:
        return zip(self.bounds[:-1], self.bounds[1:], strict=True)

    def slice(self, group: int) -> tuple[bytes, int, int]:
        """Slice ``group``: (its compressed segments, CRC-32 of its bytes, H*W)."""
        parts, crc, inside = [], 0, np.empty(0, dtype=np.bool_)
        for j, (a, b) in enumerate(self._spans()):
            if self.present[j, group]:
                if inside.size != b - a:
                    inside = np.empty(b - a, dtype=np.bool_)
                np.equal(self.flat[a:b], group, out=inside)
                raw = inside.view(np.uint8).data
                parts.append(_compress(raw, self.level))
                crc = crc32_combine(crc, zlib.crc32(raw), b - a)
            else:
                data, zero_crc = self.zeros[b - a]
                parts.append(data)
                crc = crc32_combine(crc, zero_crc, b - a)
        return b"".join(parts), crc, self.flat.size


def _compress(data: bytes | memoryview, level: int) -> bytes:
    """``data`` as a raw deflate segment that ends byte-aligned and not final."""
    packer = zlib.compressobj(level, zlib.DEFLATED, -15)
    return packer.compress(data) + packer.flush(_SYNC)


def _zero_segment(length: int, level: int) -> tuple[bytes, int]:
    """Compressed zeros and their CRC. Made once per file, so at level 9 unless stored (0)."""
    zeros = bytes(length)
    return _compress(zeros, 9 if level else 0), zlib.crc32(zeros)


# --- CRC-32 combination (zlib's crc32_combine: polynomial arithmetic modulo P) ----------

_POLY = 0xEDB88320  # CRC-32, reflected


def _multmodp(a: int, b: int) -> int:
    """a * b modulo the CRC polynomial (reflected bit order)."""
    m, p = 1 << 31, 0
    while True:
        if a & m:
            p ^= b
            if a & (m - 1) == 0:
                return p
        m >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1


def _powers() -> list[int]:
    table = [1 << 30]  # x^1
    for _ in range(31):
        table.append(_multmodp(table[-1], table[-1]))
    return table  # table[k] = x^(2^k)


_X2N = _powers()


@lru_cache(maxsize=64)
def _x8nmodp(length: int) -> int:
    """x^(8 * length) modulo P."""
    p, k, n = 1 << 31, 3, length
    while n:
        if n & 1:
            p = _multmodp(_X2N[k & 31], p)
        n >>= 1
        k += 1
    return p


def crc32_combine(crc1: int, crc2: int, length2: int) -> int:
    """CRC-32 of A + B from crc32(A), crc32(B) and len(B)."""
    if length2 == 0:
        return crc1
    return _multmodp(_x8nmodp(length2), crc1) ^ crc2


# --- zip headers (one zip64 member at the start of the file, as zipfile writes it) ------


def _dos_time() -> tuple[int, int]:
    """Zip's (time, date) fields for the member: always 1980-01-01 00:00, zip's epoch, so the
    same label map gives the same bytes whenever it is written (a rerun after a kill ends with
    the files an unbroken run writes; the file's own mtime still says when)."""
    return 0, (0 << 9) | (1 << 5) | 1


def _local_header(stamp: tuple[int, int], crc: int, packed: int, raw: int) -> bytes:
    clock, day = stamp
    extra = struct.pack("<HHQQ", 1, 16, raw, packed)
    fixed = struct.pack(
        "<IHHHHHIIIHH", 0x04034B50, 45, 0, 8, clock, day, crc, _U32, _U32, len(MEMBER), len(extra)
    )
    return fixed + MEMBER + extra


def _central_directory(
    handle: IO[bytes], stamp: tuple[int, int], offset: int, crc: int, packed: int, raw: int
) -> None:
    """The central directory and end records (zip64 ones always, which zipfile reads)."""
    clock, day = stamp
    extra = struct.pack("<HHQQ", 1, 16, raw, packed)
    entry = (
        struct.pack(
            "<IHHHHHHIIIHHHHHII",
            0x02014B50,
            45,
            45,
            0,
            8,
            clock,
            day,
            crc,
            _U32,
            _U32,
            len(MEMBER),
            len(extra),
            0,
            0,
            0,
            0o600 << 16,
            offset,
        )
        + MEMBER
        + extra
    )
    start = handle.tell()
    handle.write(entry)
    end = handle.tell()
    size = end - start
    handle.write(struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, 1, 1, size, start))
    handle.write(struct.pack("<IIQI", 0x07064B50, 0, end, 1))
    handle.write(
        struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, min(size, _U32), min(start, _U32), 0)
    )
