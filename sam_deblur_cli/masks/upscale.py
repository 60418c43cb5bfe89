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


class ExactUpscaler:
    """segment_anything's mask upscaling chain for one image size, with cheap statistics.

    The stock chain is: 256 x 256 logits -> bilinear to img_size^2 -> crop to the input size
    (hi x wi) -> bilinear to the original size (H x W), align_corners=False. Torch's bilinear
    kernel resizes columns, then combines two rows, so the chain equals: the same resizes up
    to G = resize(crop, (hi, W)), then output row y = combine(G[a_y], w_a, G[b_y], w_b).
    Each output pixel lies between G[a] and G[b] at its column, so a pixel whose bracket does
    not contain a threshold needs no evaluation; only the rest (mask edges) are computed one
    by one. The row taps and the rounding of ``combine`` are read off torch's kernel once per
    image size and checked bit for bit; if the check fails, the full-resolution chain is
    used instead (same results, slower). Below a 2x upscale the rows save too little, and
    the full-resolution chain is used too (``by_rows``).

    A "source" is what an output row reads: a pair of adjacent G rows (a, a+1), or a single
    G row (a, a) at the clamped borders. Rows reading the same source are consecutive.
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
        self._read_row_taps()
        self.style = self._pick_style()
        if self.style is None:
            logger.warning(
                "Row-wise upscaling does not reproduce this torch build's kernel; "
                "using full-resolution upscaling for mask statistics (slower)."
            )
        # Rows pay off when each source feeds several output rows (an upscale of 2x or more).
        self.by_rows = self.style is not None and self.max_len >= 3 and self.all_used
        self.chunk = max(1, min(64, 12_000_000 // (input_size[0] * original_size[1])))

    def _read_row_taps(self) -> None:
        """Row taps of the last resize, from torch's kernel applied to an identity matrix."""
        import torch
        import torch.nn.functional as F

        hi, h = self.input_size[0], self.original_size[0]
        dev = self.device
        eye = torch.eye(hi, device=dev)[None, None]
        weights = F.interpolate(eye, (h, hi), mode="bilinear", align_corners=False)[0, 0]
        first, last = _taps(hi, h, dev)
        rows = torch.arange(h, device=dev)
        self.row_a, self.row_b = first, last
        self.w_a = weights[rows, first]
        self.w_b = torch.where(first != last, weights[rows, last], 0.0)
        # Sources 0..hi-2 are the pairs (a, a+1); then one source per single row used.
        is_pair = last == first + 1
        self.singles = torch.unique(first[~is_pair])
        single_slot = torch.searchsorted(self.singles, first)
        self.row_source = torch.where(is_pair, first, hi - 1 + single_slot)
        n_sources = hi - 1 + len(self.singles)
        self.source_len = torch.bincount(self.row_source, minlength=n_sources)
        start = torch.full((n_sources,), h, device=dev, dtype=torch.long)
        self.source_start = start.scatter_reduce(0, self.row_source, rows, "amin")
        self.source_used = self.source_len > 0
        self.all_used = bool(self.source_used.all())
        self.max_len = int(self.source_len.max())

    def _pick_style(self) -> str | None:
        """The rounding of ``combine`` that reproduces torch's kernel here, or None."""
        import torch

        if torch.device(self.device).type == "mps":  # no float64 there to emulate fma with
            return None
        gen = torch.Generator().manual_seed(0)
        side = self.img_size // 4
        low = (torch.randn(1, side, side, generator=gen) * 8).to(self.device)
        # Every output row, on a spread of columns (columns go through torch's own resize).
        cols = torch.linspace(0, self.original_size[1] - 1, 257, device=self.device).long()
        full = self._reference_chain(low)[0][:, cols]
        g = self._rows_source(low)[0][:, cols]
        for style in ("addcmul", "fma_a", "separate", "fma_b"):
            rows = _combine(
                g[self.row_a], self.w_a[:, None], g[self.row_b], self.w_b[:, None], style
            )
            if torch.equal(rows, full):
                return style
        return None

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
        self, g: torch.Tensor, margin: torch.Tensor, top: float, bottom: float
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per source and column: surely above ``top`` at every row it feeds (n x S x W bool),
        and the (mask, source, column) entries that may exceed ``bottom`` but are not sure.

        ``margin`` (n) covers the rounding of ``combine`` (an output is a convex combination).
        """
        import torch

        margin = margin.view(-1, 1, 1)
        high, low = g > top + margin, g > bottom - margin
        n, pairs, width = g.shape[0], g.shape[1] - 1, g.shape[2]
        shape = (n, pairs + len(self.singles), width)
        above = torch.empty(shape, dtype=torch.bool, device=g.device)
        maybe = torch.empty(shape, dtype=torch.bool, device=g.device)
        torch.logical_and(high[:, :-1], high[:, 1:], out=above[:, :pairs])
        torch.logical_or(low[:, :-1], low[:, 1:], out=maybe[:, :pairs])
        above[:, pairs:], maybe[:, pairs:] = high[:, self.singles], low[:, self.singles]
        if not self.all_used:
            above &= self.source_used.view(1, -1, 1)
        maybe &= ~above
        i, s, x = maybe.nonzero(as_tuple=True)
        if self.all_used:
            return above, (i, s, x)
        used = self.source_used[s]
        return above, (i[used], s[used], x[used])

    def _exact_rows(
        self, g: torch.Tensor, index: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """For each step k, the output values at row ``source_start + k`` of the given
        (mask, source, column) entries: yields (values, rows, valid). Past a source's last
        row, entries repeat that last row and are marked not valid."""
        import torch

        i, s, x = index
        width = g.shape[2]
        flat = g.view(-1)
        base = i * (g.shape[1] * width) + x
        length, start = self.source_len[s], self.source_start[s]
        assert self.style is not None
        for step in range(self.max_len):
            y = start + torch.clamp(length - 1, max=step)
            va, vb = flat[base + self.row_a[y] * width], flat[base + self.row_b[y] * width]
            yield _combine(va, self.w_a[y], vb, self.w_b[y], self.style), y, length > step

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
        g = self._rows_source(low)
        # G's values are convex combinations of the low-res logits: bounded by them.
        above, index = self._classify(g, _margin(low.flatten(1)), max(thresholds), min(thresholds))
        sure = (above.sum(2, dtype=torch.int16) * self.source_len).sum(1)
        counts = [sure.clone() for _ in thresholds]
        box = _BoxBounds(self, above)
        owner, cols = index[0], index[2]
        with one_cpu_thread(self.device):  # many small ops: see one_cpu_thread
            for values, rows, valid in self._exact_rows(g, index):
                for count, t in zip(counts, thresholds, strict=True):
                    count.index_add_(0, owner, (valid & (values > t)).long())
                box.add(owner, rows, cols, values > t_mask)
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
        if not self.by_rows:
            return (self._stock_chain(low[None])[0] > threshold).cpu().numpy()
        g = self._rows_source(low[None])
        above, index = self._classify(g, _margin(low.view(1, -1)), threshold, threshold)
        out = above[0].index_select(0, self.row_source)  # H x W: sources surely above
        width = out.shape[1]
        with one_cpu_thread(self.device):
            for values, rows, _ in self._exact_rows(g, index):
                out.view(-1)[rows * width + index[2]] = values > threshold
        return out.cpu().numpy()


class _BoxBounds:
    """Running XYXY bounds of the pixels above a threshold, per mask of a chunk."""

    def __init__(self, upscaler: ExactUpscaler, above: torch.Tensor) -> None:
        """Start from the sources surely above (``above``: n x S x W bool)."""
        import torch

        h, w = upscaler.original_size
        self.h, self.w = h, w
        start, length = upscaler.source_start, upscaler.source_len
        rows_any, cols_any = above.any(2), above.any(1)  # n x S, n x W
        cols = torch.arange(w, device=above.device)
        self.top = torch.where(rows_any, start, h).amin(1)
        self.bottom = torch.where(rows_any, start + length - 1, -1).amax(1)
        self.left = torch.where(cols_any, cols, w).amin(1)
        self.right = torch.where(cols_any, cols, -1).amax(1)

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
