"""Image-quality metrics exactly as the SAM-Deblur paper computed them (upstream.md 7).

Every metric takes two uint8 RGB images, H x W x 3 (any channel count C >= 1 works), of
equal shape; ``to_uint8`` turns a float [0, 1] network output into that form. Nothing is
cropped at the border unless a docstring says so.

- ``psnr``: all channels, peak 255; identical images give ``inf``.
- ``ssim_3d``: NAFNet's SSIM, one 11 x 11 x 11 Gaussian window (sigma 1.5) sliding over
  H x W x C with replicate padding, mean of the whole SSIM map. The default.
- ``ssim_classic``: the per-channel 11 x 11 Gaussian SSIM of BasicSR's ``calculate_ssim``
  (and of skimage with ``gaussian_weights=True, use_sample_covariance=False``): maps are
  averaged over the valid region only (5 px cropped on every side), then over channels.
- ``is_collapsed`` / ``mode_collapse_rate``: PSNR lost against the blurred input > 3 dB.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Literal

import numpy as np

PEAK = 255.0
C1 = (0.01 * PEAK) ** 2
C2 = (0.03 * PEAK) ** 2
WINDOW = 11
SIGMA = 1.5
COLLAPSE_DB = 3.0

# Rows of the image filtered at a time: bounds the float64 working set (about
# 12 maps x rows x W x C x 8 bytes) whatever the photo size, with no effect on the result.
_STRIP_ROWS = 256

SsimVariant = Literal["3d", "classic"]


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    """Float image in [0, 1] (any shape) -> uint8: clamped, times 255, rounded to nearest.

    Works in the input's own float precision (float32 for network outputs), as BasicSR's
    ``tensor2img`` did for the paper's numbers.
    """
    return np.rint(np.clip(rgb, 0.0, 1.0) * PEAK).astype(np.uint8)


def psnr(image: np.ndarray, reference: np.ndarray) -> float:
    """PSNR in dB of uint8 ``image`` against ``reference``, peak 255; ``inf`` if identical."""
    _check_pair(image, reference)
    diff = image.astype(np.float64) - reference.astype(np.float64)
    mse = float(np.mean(diff * diff))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(PEAK * PEAK / mse)


def ssim(image: np.ndarray, reference: np.ndarray, variant: SsimVariant = "3d") -> float:
    """SSIM of two uint8 images with the chosen variant (``"3d"``: the paper's)."""
    if variant == "3d":
        return ssim_3d(image, reference)
    if variant == "classic":
        return ssim_classic(image, reference)
    raise ValueError(f"unknown SSIM variant {variant!r}; use '3d' or 'classic'")


def ssim_3d(image: np.ndarray, reference: np.ndarray) -> float:
    """NAFNet's 3-D SSIM of two uint8 H x W x C images (replicate padding, full map mean).

    The window is the outer product of three 1-D Gaussians, so it is applied as a 2-D
    Gaussian per channel followed by an 11-tap Gaussian along the channel axis; with
    replicate padding the latter is a fixed C x C mixing matrix.
    """
    _check_pair(image, reference)
    mix = _channel_mixing(image.shape[2])
    kernel = gaussian_kernel()

    def window_mean(plane: np.ndarray) -> np.ndarray:
        return _mix_channels(_spatial_filter(plane, kernel), mix)

    height = image.shape[0]
    return _strip_mean(image, reference, window_mean, rows=(0, height), cols=(0, image.shape[1]))


def ssim_classic(image: np.ndarray, reference: np.ndarray) -> float:
    """Classic SSIM: per-channel 11 x 11 Gaussian window, valid region, mean over channels.

    Raises ValueError for images smaller than the window, which have no valid region.
    """
    _check_pair(image, reference)
    height, width = image.shape[:2]
    if min(height, width) < WINDOW:
        raise ValueError(f"classic SSIM needs images of at least {WINDOW} x {WINDOW} pixels")
    kernel = gaussian_kernel()
    half = WINDOW // 2

    def window_mean(plane: np.ndarray) -> np.ndarray:
        return _spatial_filter(plane, kernel)

    return _strip_mean(
        image, reference, window_mean, rows=(half, height - half), cols=(half, width - half)
    )


def is_collapsed(psnr_input: float, psnr_output: float, threshold: float = COLLAPSE_DB) -> bool:
    """True when deblurring lost more than ``threshold`` dB against the blurred input.

    Infinite PSNRs (identical images) follow the arithmetic, except inf - inf, which
    means nothing was lost.
    """
    if math.isinf(psnr_input) and math.isinf(psnr_output):
        return False
    return psnr_input - psnr_output > threshold


def mode_collapse_rate(
    pairs: Iterable[tuple[float, float]], threshold: float = COLLAPSE_DB
) -> float:
    """Share in [0, 1] of (psnr_input, psnr_output) pairs that collapsed; NaN if empty."""
    flags = [is_collapsed(p_in, p_out, threshold) for p_in, p_out in pairs]
    return sum(flags) / len(flags) if flags else math.nan


def mean_psnr(values: Iterable[float]) -> float:
    """Mean of the finite PSNRs; ``inf`` if all were infinite, NaN if there were none.

    Identical images (``inf``) would make any mean infinite, so they are left out here and
    callers report how many there were.
    """
    items = list(values)
    finite = [v for v in items if math.isfinite(v)]
    if finite:
        return math.fsum(finite) / len(finite)
    return math.inf if items else math.nan


def gaussian_kernel(size: int = WINDOW, sigma: float = SIGMA) -> np.ndarray:
    """1-D Gaussian, float64, summing to 1 (equal to ``cv2.getGaussianKernel(size, sigma)``)."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    weights = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return weights / weights.sum()


def _check_pair(image: np.ndarray, reference: np.ndarray) -> None:
    if image.dtype != np.uint8 or reference.dtype != np.uint8:
        raise ValueError("metrics take uint8 images; convert float outputs with to_uint8()")
    if image.ndim != 3 or image.shape != reference.shape:
        raise ValueError(
            f"metrics need two H x W x C images of equal shape, got {image.shape} and "
            f"{reference.shape}"
        )


def _channel_mixing(channels: int) -> np.ndarray:
    """C x C matrix of the 11-tap Gaussian along the channel axis with replicate padding."""
    kernel = gaussian_kernel()
    half = WINDOW // 2
    mix = np.zeros((channels, channels), dtype=np.float64)
    for out in range(channels):
        for tap, weight in enumerate(kernel):
            mix[out, min(max(out + tap - half, 0), channels - 1)] += weight
    return mix


def _mix_channels(plane: np.ndarray, mix: np.ndarray) -> np.ndarray:
    """out[..., i] = sum_j mix[i, j] * plane[..., j] for a float64 H x W x C array."""
    import cv2

    if plane.shape[2] <= 4:  # cv2.transform: one SIMD pass, no BLAS threads to spin up
        return cv2.transform(plane, mix).reshape(plane.shape)
    return np.tensordot(plane, mix, axes=([2], [1]))


def _spatial_filter(plane: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """2-D separable Gaussian of each channel of a float64 H x W x C array, replicate border."""
    import cv2

    def apply(array: np.ndarray) -> np.ndarray:
        return cv2.sepFilter2D(array, cv2.CV_64F, kernel, kernel, borderType=cv2.BORDER_REPLICATE)

    if plane.shape[2] <= 4:  # OpenCV filters up to 4 interleaved channels in one call
        return apply(plane).reshape(plane.shape)
    return np.stack([apply(np.ascontiguousarray(plane[:, :, c])) for c in range(plane.shape[2])], 2)


def _strip_mean(
    image: np.ndarray,
    reference: np.ndarray,
    window_mean: Callable[[np.ndarray], np.ndarray],
    rows: tuple[int, int],
    cols: tuple[int, int],
) -> float:
    """Mean SSIM map over ``rows`` x ``cols``, computed in horizontal strips.

    Each strip is filtered with a halo of WINDOW // 2 rows, so its inner rows are exactly
    those of filtering the whole image; replicate padding still only happens at the real
    top and bottom edges.
    """
    halo = WINDOW // 2
    height = image.shape[0]
    total, count = 0.0, 0
    for top in range(rows[0], rows[1], _STRIP_ROWS):
        bottom = min(top + _STRIP_ROWS, rows[1])
        lo, hi = max(top - halo, 0), min(bottom + halo, height)
        x = image[lo:hi].astype(np.float64)
        y = reference[lo:hi].astype(np.float64)
        inner = (slice(top - lo, bottom - lo), slice(cols[0], cols[1]))
        ssim_map = _ssim_map(x, y, window_mean)[inner]
        total += float(ssim_map.sum())
        count += ssim_map.size
    return total / count


def _ssim_map(
    x: np.ndarray, y: np.ndarray, window_mean: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """SSIM map of two float64 arrays in [0, 255] under the given local-mean operator."""
    mu_x, mu_y = window_mean(x), window_mean(y)
    mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
    var_x = window_mean(x * x) - mu_xx
    var_y = window_mean(y * y) - mu_yy
    cov = window_mean(x * y) - mu_xy
    numerator = (2.0 * mu_xy + C1) * (2.0 * cov + C2)
    return numerator / ((mu_xx + mu_yy + C1) * (var_x + var_y + C2))
