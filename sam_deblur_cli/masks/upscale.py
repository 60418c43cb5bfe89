"""segment_anything's mask upscaling chain, with exact statistics at a fraction of its cost.

:class:`ExactUpscaler` brings SAM's 256 x 256 low-res logits to the original image size
exactly as ``Sam.postprocess_masks`` does, and counts the pixels above thresholds and the
boxes of a mask without making the whole full-resolution mask when the image is upscaled
2x or more (only the pixels near a threshold are computed). The fast mask generator uses it
for stability scores, areas and boxes, and for its output masks.

torch is imported inside functions: ``sam_deblur_cli.masks`` is imported by the CLI at
start-up.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch

logger = logging.getLogger(__name__)


class _Axis:
    """The taps of one axis of the last resize (``size_in`` -> ``size_out``), from torch's
    kernel applied to an identity matrix, grouped into *sources*.

    Output index i reads inputs ``a[i]`` and ``b[i]`` with weights ``w_a[i]``, ``w_b[i]``
    (at the clamped borders b = a and ``w_b`` is 0). Source s is the input pair (s, s+1),
    s < size_in - 1: output i belongs to source min(a[i], size_in - 2), whose pair holds
    every input it reads. Outputs of one source are consecutive: ``start[s]``, ``length[s]``.
    """

    def __init__(self, size_in: int, size_out: int, device: Any) -> None:
        import torch
        import torch.nn.functional as F

        eye = torch.eye(size_in, device=device)[None, None]
        weights = F.interpolate(eye, (size_out, size_in), mode="bilinear", align_corners=False)
        weights = weights[0, 0]
        first, last = _taps(size_in, size_out, device)
        out = torch.arange(size_out, device=device)
        self.a, self.b = first, last
        self.w_a = weights[out, first]
        self.w_b = torch.where(first != last, weights[out, last], 0.0)
        n_sources = max(1, size_in - 1)
        self.source = first.clamp(max=n_sources - 1)  # per output
        self.length = torch.bincount(self.source, minlength=n_sources)
        start = torch.full((n_sources,), size_out, device=device, dtype=torch.long)
        self.start = start.scatter_reduce(0, self.source, out, "amin")
        self.used = self.length > 0
        self.all_used = bool(self.used.all())
        self.max_len = int(self.length.max())

    @staticmethod
    def cells(values: torch.Tensor, dim: int, reduce: Any) -> torch.Tensor:
        """``reduce`` (e.g. torch.bitwise_and / or) of each source's input pair along ``dim``."""
        n = values.shape[dim]
        if n == 1:
            return values
        return reduce(values.narrow(dim, 0, n - 1), values.narrow(dim, 1, n - 1))


class ExactUpscaler:
    """segment_anything's mask upscaling chain for one image size, with cheap statistics.

    The stock chain is: 256 x 256 logits -> bilinear to img_size^2 -> crop to the input size
    (hi x wi), the *input frame* F -> bilinear to the original size (H x W),
    align_corners=False. Torch's bilinear kernel resizes columns, then combines two rows:
    G[r, x] = combine(F[r, c_x], F[r, d_x]), then output[y, x] = combine(G[a_y, x], G[b_y, x]).
    So each output pixel is a convex combination of one *cell* of F (a source of rows times
    a source of columns, see ``_Axis``), and a pixel whose cell's values are all above (or
    all below) a threshold needs no evaluation; only the cells that straddle it (mask edges)
    are computed, pixel by pixel. The taps and the rounding of ``combine`` are read off
    torch's kernel once per image size and checked bit for bit; if the check fails, the
    full-resolution chain is used instead (same results, slower). Below a 2x upscale the
    cells save too little, and the full-resolution chain is used too (``by_rows``, the
    name of the flag from when the saving went by rows: True for the cell-wise path).
    """

    def __init__(
        self,
        input_size: tuple[int, int],
        original_size: tuple[int, int],
        img_size: int,
        device: Any,
    ) -> None:
        self.input_size = input_size
        self.original_size = original_size
        self.img_size = img_size
        self.device = device
        self._crop_first_resize()
        self.rows = _Axis(input_size[0], original_size[0], device)
        self.cols = _Axis(input_size[1], original_size[1], device)
        self.style, self.col_style = self._pick_style()
        if self.style is None:
            logger.warning(
                "Cell-wise upscaling does not reproduce this torch build's kernel; "
                "using full-resolution upscaling for mask statistics (slower)."
            )
        # Cells pay off when each feeds several output pixels (an upscale of 2x or more).
        self.by_rows = (
            self.style is not None
            and min(self.rows.max_len, self.cols.max_len) >= 3
            and self.rows.all_used
            and self.cols.all_used
        )
        self.chunk = max(1, min(64, 12_000_000 // (input_size[0] * original_size[1])))
        if self.by_rows:  # the input frame is all a chunk holds
            self.chunk = max(1, min(64, 12_000_000 // (input_size[0] * input_size[1])))

    def _pick_style(self) -> tuple[str | None, str | None]:
        """The roundings of ``combine`` (rows, columns) that reproduce torch's kernel here."""
        import torch

        if torch.device(self.device).type == "mps":  # no float64 there to emulate fma with
            return None, None
        gen = torch.Generator().manual_seed(0)
        side = self.img_size // 4
        low = (torch.randn(1, side, side, generator=gen) * 8).to(self.device)
        frame = self._input_frame(low)[0, 0]
        g = self._rows_source(low)[0]  # torch's column pass, every value
        c = self.cols
        col_style = next(
            (
                style
                for style in _STYLES
                if torch.equal(_combine(frame[:, c.a], c.w_a, frame[:, c.b], c.w_b, style), g)
            ),
            None,
        )
        if col_style is None:
            return None, None
        # Every output row, on a spread of columns (columns go through torch's own resize).
        cols = torch.linspace(0, self.original_size[1] - 1, 257, device=self.device).long()
        full = self._reference_chain(low)[0][:, cols]
        g = g[:, cols]
        r = self.rows
        for style in _STYLES:
            rows = _combine(g[r.a], r.w_a[:, None], g[r.b], r.w_b[:, None], style)
            if torch.equal(rows, full):
                return style, col_style
        return None, None

    def _reference_chain(self, low: torch.Tensor) -> torch.Tensor:
        """n x 256 x 256 -> n x H x W, ``Sam.postprocess_masks`` verbatim (for the checks)."""
        import torch.nn.functional as F

        size = (self.img_size, self.img_size)
        up = F.interpolate(low[:, None], size, mode="bilinear", align_corners=False)
        up = up[..., : self.input_size[0], : self.input_size[1]]
        return F.interpolate(up, self.original_size, mode="bilinear", align_corners=False)[:, 0]

    def _input_frame(self, low: torch.Tensor) -> torch.Tensor:
        """n x 256 x 256 -> n x 1 x hi x wi: the first resize, cropped to the input size.

        With ``_first_crop`` only the low-res rows and columns the crop reads are resized:
        r of them to r * 4 keeps the scale (and so every tap and weight) of the full resize;
        ``__init__`` checks the result against the verbatim chain.
        """
        import torch.nn.functional as F

        rows, cols, size = self._first_crop
        up = F.interpolate(low[:, None, :rows, :cols], size, mode="bilinear", align_corners=False)
        return up[..., : self.input_size[0], : self.input_size[1]]

    def _crop_first_resize(self) -> None:
        """Use the cropped first resize if it reproduces the verbatim chain here."""
        import torch

        side = self.img_size // 4  # SAM's low-res masks are a quarter of its input side
        self._first_crop = (side, side, (self.img_size, self.img_size))
        if side * 4 != self.img_size:
            return
        rows, cols = (min(side, -(-n // 4) + 1) for n in self.input_size)
        verbatim = self._first_crop
        self._first_crop = (rows, cols, (rows * 4, cols * 4))
        gen = torch.Generator().manual_seed(1)
        low = (torch.randn(1, side, side, generator=gen) * 8).to(self.device)
        if not torch.equal(self._stock_chain(low), self._reference_chain(low)):
            self._first_crop = verbatim

    def _stock_chain(self, low: torch.Tensor) -> torch.Tensor:
        """n x 256 x 256 -> n x H x W, equal to ``Sam.postprocess_masks``."""
        import torch.nn.functional as F

        up = self._input_frame(low)
        return F.interpolate(up, self.original_size, mode="bilinear", align_corners=False)[:, 0]

    def _rows_source(self, low: torch.Tensor) -> torch.Tensor:
        """n x 256 x 256 -> G, n x hi x W: the chain with its last resize on columns only."""
        import torch.nn.functional as F

        up = self._input_frame(low)
        out_size = (self.input_size[0], self.original_size[1])
        return F.interpolate(up, out_size, mode="bilinear", align_corners=False)[:, 0]

    def _classify(
        self,
        frame: torch.Tensor,
        margin: torch.Tensor,
        top: float,
        bottom: float,
        offset: tuple[int, int] = (0, 0),
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per cell (n x row sources x column sources): surely above ``top`` at every pixel
        it feeds, and the (mask, row source, column source) cells that may exceed ``bottom``
        but are not sure. ``frame``: n x hi x wi. ``margin`` (n) covers the rounding of
        ``combine`` (an output is a convex combination of its cell's values). ``frame`` may be
        a part of the input frame from row and column ``offset``: cells are then numbered
        from there."""
        import torch

        margin = margin.view(-1, 1, 1)
        # A cell is above when all four of its values are (its minimum is), and may exceed
        # when any is (its maximum): compared first, then reduced as bytes, not floats.
        above = frame > top + margin
        above = self.rows.cells(self.cols.cells(above, 2, torch.bitwise_and), 1, torch.bitwise_and)
        maybe = frame > bottom - margin
        maybe = self.rows.cells(self.cols.cells(maybe, 2, torch.bitwise_or), 1, torch.bitwise_or)
        if not (self.rows.all_used and self.cols.all_used):  # a downscale skips inputs
            rows = self.rows.used[offset[0] : offset[0] + above.shape[1]]
            used = rows[:, None] & self.cols.used[offset[1] : offset[1] + above.shape[2]]
            above &= used
            maybe &= used
        maybe &= ~above
        i, r, c = maybe.nonzero(as_tuple=True)
        return above, (i, r, c)

    def _exact_pixels(
        self, frame: torch.Tensor, cells: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The output values at every pixel of the given (mask, row source, column source)
        cells: yields (values, masks, rows, columns, valid), a block of cells at a time, each cell
        as max_len x max_len offsets (dy, dx) from its first pixel. Offsets past a cell's
        extent repeat its last row or column and are marked not valid."""
        import torch

        r, c = self.rows, self.cols
        height, width = frame.shape[1], frame.shape[2]
        flat = frame.reshape(-1)
        dev = frame.device
        dy = torch.arange(r.max_len, device=dev).repeat_interleave(c.max_len)
        dx = torch.arange(c.max_len, device=dev).repeat(r.max_len)
        assert self.style is not None and self.col_style is not None
        block = max(1, (1 << 20) // len(dy))  # cells per step: about a million pixels
        for first in range(0, len(cells[0]), block):
            i, sr, sc = (t[first : first + block, None] for t in cells)
            r_len, c_len = r.length[sr], c.length[sc]
            y = r.start[sr] + torch.minimum(r_len - 1, dy)
            x = c.start[sc] + torch.minimum(c_len - 1, dx)
            base = i * (height * width)
            top, bottom = base + r.a[y] * width, base + r.b[y] * width
            ca, cb, wx_a, wx_b = c.a[x], c.b[x], c.w_a[x], c.w_b[x]
            ga = _combine(flat[top + ca], wx_a, flat[top + cb], wx_b, self.col_style)
            gb = _combine(flat[bottom + ca], wx_a, flat[bottom + cb], wx_b, self.col_style)
            value = _combine(ga, r.w_a[y], gb, r.w_b[y], self.style)
            valid = (r_len > dy) & (c_len > dx)
            owner = i.expand_as(y).reshape(-1)
            yield value.reshape(-1), owner, y.reshape(-1), x.reshape(-1), valid.reshape(-1)

    def stats(
        self, low: torch.Tensor, t_high: float, t_low: float, t_mask: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits n x 256 x 256 -> counts of upscaled values > t_high, > t_low, > t_mask
        (int64, n each) and boxes n x 4 (int64 XYXY, inclusive, zeros when empty) of > t_mask,
        equal to those computed on the output of ``Sam.postprocess_masks``."""
        if not self.by_rows:
            return self._stats_full(low, (t_high, t_low, t_mask))
        import torch

        thresholds = (t_high, t_low, t_mask)
        frame = self._input_frame(low)[:, 0]
        # F's values are convex combinations of the low-res logits: bounded by them.
        above, cells = self._classify(
            frame, _margin(low.flatten(1)), max(thresholds), min(thresholds)
        )
        # Pixels of the sure cells: row lengths x column lengths (sums of whole numbers below
        # 2**24 in float32 per row of cells, then float64: exact).
        per_row = above.to(torch.float32) @ self.cols.length.to(torch.float32)
        sure = (per_row.double() @ self.rows.length.double()).round().long()
        counts = [sure.clone() for _ in thresholds]
        box = _BoxBounds(self, per_row > 0, above.any(1))
        with one_cpu_thread(self.device):  # many small ops: see one_cpu_thread
            for values, owner, rows, cols, valid in self._exact_pixels(frame, cells):
                for count, t in zip(counts, thresholds, strict=True):
                    count.index_add_(0, owner, (valid & (values > t)).long())
                box.add(owner, rows, cols, valid & (values > t_mask))
        return counts[0], counts[1], counts[2], box.result()

    def _stats_full(
        self, low: torch.Tensor, thresholds: tuple[float, float, float]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The same statistics from the full-resolution chain, a chunk at a time.

        Row sums in int16 as segment_anything does (a row has fewer than 2**15 pixels);
        boxes from row and column maxima, which is ``batched_mask_to_box`` of ``> t``.
        """
        import torch

        full = self._stock_chain(low)
        counts = [
            (full > t).sum(-1, dtype=torch.int16).sum(-1, dtype=torch.int64) for t in thresholds
        ]
        h, w = self.original_size
        rows_any, cols_any = full.amax(2) > thresholds[2], full.amax(1) > thresholds[2]
        rows, cols = torch.arange(h, device=full.device), torch.arange(w, device=full.device)
        top, bottom = (
            torch.where(rows_any, rows, h).amin(1),
            torch.where(rows_any, rows, -1).amax(1),
        )
        left, right = (
            torch.where(cols_any, cols, w).amin(1),
            torch.where(cols_any, cols, -1).amax(1),
        )
        boxes = torch.stack([left, top, right, bottom], dim=1)
        return counts[0], counts[1], counts[2], torch.where(rows_any.any(1)[:, None], boxes, 0)

    def mask(self, low: torch.Tensor, threshold: float) -> np.ndarray:
        """Logits 256 x 256 -> bool H x W (numpy), equal to the stock chain thresholded."""
        h, w = self.original_size
        return self.mask_window(low, threshold, (0, 0, w - 1, h - 1))

    def mask_window(
        self, low: torch.Tensor, threshold: float, box: tuple[int, int, int, int]
    ) -> np.ndarray:
        """Logits 256 x 256 -> the stock chain thresholded, in the window ``box`` (XYXY,
        inclusive): bool (y1 - y0 + 1) x (x1 - x0 + 1) numpy. With the mask's own box, the
        window holds every pixel of the mask."""
        x0, y0, x1, y1 = box
        if not self.by_rows:
            full = self._stock_chain(low[None])[0, y0 : y1 + 1, x0 : x1 + 1]
            return (full > threshold).cpu().numpy()
        frame = self._input_frame(low[None])[:, 0]
        r_src, c_src = self.rows.source[y0 : y1 + 1], self.cols.source[x0 : x1 + 1]
        r_off, c_off = int(r_src[0]), int(c_src[0])
        # Only the cells the window meets: sources r_off.. and c_off.. read inputs from there.
        part = frame[:, r_off : int(r_src[-1]) + 2, c_off : int(c_src[-1]) + 2]
        margin = _margin(low.view(1, -1))
        above, (i, sr, sc) = self._classify(part, margin, threshold, threshold, (r_off, c_off))
        out = above[0].index_select(0, r_src - r_off).index_select(1, c_src - c_off)
        cells = (i, sr + r_off, sc + c_off)
        width = out.shape[1]
        with one_cpu_thread(self.device):
            for values, _, rows, cols, valid in self._exact_pixels(frame, cells):
                inside = valid & (rows >= y0) & (rows <= y1) & (cols >= x0) & (cols <= x1)
                at = (rows[inside] - y0) * width + (cols[inside] - x0)
                out.view(-1)[at] = values[inside] > threshold
        return out.cpu().numpy()


class _BoxBounds:
    """Running XYXY bounds of the pixels above a threshold, per mask of a chunk."""

    def __init__(
        self, upscaler: ExactUpscaler, rows_any: torch.Tensor, cols_any: torch.Tensor
    ) -> None:
        """Start from the sources with a cell surely above: n x row sources, n x column
        sources (bool)."""
        import torch

        h, w = upscaler.original_size
        self.h, self.w = h, w
        r, c = upscaler.rows, upscaler.cols
        self.top = torch.where(rows_any, r.start, h).amin(1)
        self.bottom = torch.where(rows_any, r.start + r.length - 1, -1).amax(1)
        self.left = torch.where(cols_any, c.start, w).amin(1)
        self.right = torch.where(cols_any, c.start + c.length - 1, -1).amax(1)

    def add(
        self, owner: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, inside: torch.Tensor
    ) -> None:
        """Widen by single pixels (owner mask, row, column) where ``inside`` holds."""
        import torch

        self.top.scatter_reduce_(0, owner, torch.where(inside, rows, self.h), "amin")
        self.bottom.scatter_reduce_(0, owner, torch.where(inside, rows, -1), "amax")
        self.left.scatter_reduce_(0, owner, torch.where(inside, cols, self.w), "amin")
        self.right.scatter_reduce_(0, owner, torch.where(inside, cols, -1), "amax")

    def result(self) -> torch.Tensor:
        """n x 4 int64 XYXY; [0, 0, 0, 0] for an empty mask, as segment_anything does."""
        import torch

        boxes = torch.stack([self.left, self.top, self.right, self.bottom], dim=1)
        empty = (self.right < self.left) | (self.bottom < self.top)
        return torch.where(empty[:, None], 0, boxes)


_STYLES = ("addcmul", "fma_a", "separate", "fma_b")


def _taps(size_in: int, size_out: int, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """First and last input index read by each output index of a bilinear resize."""
    import torch
    import torch.nn.functional as F

    eye = torch.eye(size_in, device=device)[None, None]
    weights = F.interpolate(eye, (size_out, size_in), mode="bilinear", align_corners=False)[0, 0]
    cols = torch.arange(size_in, device=device).expand(size_out, size_in)
    first = torch.where(weights != 0, cols, size_in).amin(1).clamp(max=size_in - 1)
    last = torch.where(weights != 0, cols, -1).amax(1).clamp(min=0)
    return first, last


def _margin(values: torch.Tensor) -> torch.Tensor:
    """Per row of ``values`` (n x ...), a bound on the rounding of a convex combination."""
    return 1e-4 + 1e-6 * values.abs().amax(dim=1)


def _combine(
    ga: torch.Tensor, wa: torch.Tensor, gb: torch.Tensor, wb: torch.Tensor, style: str
) -> torch.Tensor:
    """One bilinear tap pair in float32 with a given rounding (``addcmul``: torch's, fused on
    some CPUs; ``fma_*``: fused multiply-add emulated in float64)."""
    if style == "addcmul":
        import torch

        return torch.addcmul(gb * wb, ga, wa)
    if style == "separate":
        return ga * wa + gb * wb
    if style == "fma_a":
        return (ga.double() * wa.double() + (gb * wb).double()).float()
    return (gb.double() * wb.double() + (ga * wa).double()).float()


@contextmanager
def one_cpu_thread(device: Any) -> Iterator[None]:
    """Run a loop of many small ops on one CPU thread, then restore the count.

    The exact-rows loops index a few thousand values per op; on 2 cores, two threads' per-op
    hand-offs cost more than they gain there (12 MP post-processing with the whole process on
    one thread: 41 CPU-s against 173 on two). The bulk resizes around them keep every thread.
    """
    import torch

    if torch.device(device).type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
