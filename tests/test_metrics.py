"""Metrics against oracles written from upstream.md section 7."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from skimage import data
from skimage.metrics import structural_similarity

from sam_deblur_cli import metrics


def _noisy(image: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(image + rng.normal(0.0, sigma, image.shape), 0, 255).astype(np.uint8)


def _slow_ssim_3d(x: np.ndarray, y: np.ndarray) -> float:
    """The spec read literally: explicit 11x11x11 window, edge padding, loop over voxels."""
    t = np.arange(11) - 5.0
    g = np.exp(-(t**2) / (2 * 1.5**2))
    g /= g.sum()
    window = g[:, None, None] * g[None, :, None] * g[None, None, :]
    xp = np.pad(x.astype(np.float64), 5, mode="edge")
    yp = np.pad(y.astype(np.float64), 5, mode="edge")
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    values = []
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            for k in range(x.shape[2]):
                px = xp[i : i + 11, j : j + 11, k : k + 11]
                py = yp[i : i + 11, j : j + 11, k : k + 11]
                mx, my = (window * px).sum(), (window * py).sum()
                vx = (window * px * px).sum() - mx * mx
                vy = (window * py * py).sum() - my * my
                cxy = (window * px * py).sum() - mx * my
                num = (2 * mx * my + c1) * (2 * cxy + c2)
                values.append(num / ((mx * mx + my * my + c1) * (vx + vy + c2)))
    return float(np.mean(values))


@pytest.mark.parametrize("offset", [1, 3, 17, 100])
def test_psnr_of_a_constant_offset(offset: int) -> None:
    sharp = np.full((8, 9, 3), 60, dtype=np.uint8)
    shifted = sharp + np.uint8(offset)
    expected = 10 * math.log10(255**2 / offset**2)
    assert metrics.psnr(shifted, sharp) == pytest.approx(expected, abs=1e-12)
    assert metrics.psnr(sharp, shifted) == pytest.approx(expected, abs=1e-12)


def test_psnr_uses_all_channels_and_no_border_crop() -> None:
    sharp = np.zeros((10, 10, 3), dtype=np.uint8)
    other = sharp.copy()
    other[0, 0, 2] = 30  # one corner pixel of one channel: a border crop would hide it
    mse = 30**2 / sharp.size
    assert metrics.psnr(other, sharp) == pytest.approx(10 * math.log10(255**2 / mse))


def test_psnr_of_identical_images_is_infinite() -> None:
    image = data.astronaut()[:32, :32]
    assert metrics.psnr(image, image.copy()) == math.inf


def test_to_uint8_clamps_scales_and_rounds() -> None:
    values = np.array([-0.2, 0.0, 0.4 / 255, 0.6 / 255, 0.49, 1.0, 1.7], dtype=np.float32)
    assert metrics.to_uint8(values).tolist() == [0, 0, 0, 1, 125, 255, 255]
    assert metrics.to_uint8(values).dtype == np.uint8


@pytest.mark.parametrize("variant", ["3d", "classic"])
def test_ssim_of_an_image_with_itself_is_one(variant: metrics.SsimVariant) -> None:
    image = data.chelsea()[:64, :80]
    assert metrics.ssim(image, image.copy(), variant) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("variant", ["3d", "classic"])
def test_ssim_falls_as_noise_grows(variant: metrics.SsimVariant) -> None:
    image = data.coffee()[:96, :96]
    scores = [metrics.ssim(_noisy(image, s), image, variant) for s in (2, 8, 24, 64)]
    assert all(a > b for a, b in itertools.pairwise(scores)), scores
    assert scores[0] < 1.0


def _channels(count: int) -> np.ndarray:
    image = np.repeat(data.chelsea()[50:62, 60:72, :1], count, axis=2)
    image[..., -1] //= 2  # make the channels differ so the channel window matters
    return image


@pytest.mark.parametrize(
    ("image", "sigma", "seed", "strip_rows"),
    [
        pytest.param(data.astronaut()[200:216, 180:196], 20.0, 0, None, id="rgb"),
        # Odd sizes and strips of 4 rows put strip seams everywhere, including within 5 rows
        # of the edges, where the halo and the replicate padding meet.
        pytest.param(data.rocket()[100:123, 200:217], 15.0, 3, 4, id="strips"),
        pytest.param(_channels(1), 12.0, 0, None, id="1-channel"),
        pytest.param(_channels(5), 12.0, 0, None, id="5-channels"),
    ],
)
def test_ssim_3d_matches_a_voxel_by_voxel_evaluation(
    monkeypatch: pytest.MonkeyPatch,
    image: np.ndarray,
    sigma: float,
    seed: int,
    strip_rows: int | None,
) -> None:
    if strip_rows is not None:
        monkeypatch.setattr(metrics, "_STRIP_ROWS", strip_rows)
    noisy = _noisy(image, sigma, seed)
    assert metrics.ssim_3d(noisy, image) == pytest.approx(_slow_ssim_3d(noisy, image), abs=1e-12)


def test_ssim_3d_differs_from_the_classic_one() -> None:
    image = data.astronaut()[:64, :64]
    noisy = _noisy(image, 20.0)
    assert abs(metrics.ssim_3d(noisy, image) - metrics.ssim_classic(noisy, image)) > 1e-3


@pytest.mark.parametrize("strip_rows", [256, 7])
def test_classic_ssim_matches_skimage(monkeypatch: pytest.MonkeyPatch, strip_rows: int) -> None:
    # Same window (11 taps, sigma 1.5), same constants, same valid region, both float64:
    # only the summation order differs, so agreement must hold to ~1e-15; 1e-10 leaves
    # room for the platform's BLAS/filter accumulation order and nothing more.
    monkeypatch.setattr(metrics, "_STRIP_ROWS", strip_rows)
    image = data.chelsea()[:90, :120]
    noisy = _noisy(image, 18.0)
    expected = structural_similarity(
        noisy,
        image,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=255,
        channel_axis=2,
    )
    assert metrics.ssim_classic(noisy, image) == pytest.approx(expected, abs=1e-10)


def test_classic_ssim_refuses_images_smaller_than_the_window() -> None:
    tiny = np.zeros((10, 30, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="at least 11"):
        metrics.ssim_classic(tiny, tiny)


def test_metrics_refuse_float_images_and_shape_mismatch() -> None:
    image = np.zeros((12, 12, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="to_uint8"):
        metrics.psnr(image.astype(np.float32), image)
    with pytest.raises(ValueError, match="equal shape"):
        metrics.ssim_3d(image, image[:11])
    with pytest.raises(ValueError, match="variant"):
        metrics.ssim(image, image, "4d")  # type: ignore[arg-type]


def test_collapse_needs_more_than_three_db_lost() -> None:
    assert metrics.is_collapsed(30.0, 26.9)
    assert not metrics.is_collapsed(30.0, 27.0)  # exactly 3 dB is not "more than"
    assert not metrics.is_collapsed(25.0, 31.0)
    assert not metrics.is_collapsed(30.0, math.inf)
    assert metrics.is_collapsed(math.inf, 40.0)
    assert not metrics.is_collapsed(math.inf, math.inf)


def test_mode_collapse_rate_counts_constructed_cases() -> None:
    pairs = [(30.0, 20.0), (30.0, 31.0), (28.0, 24.5), (25.0, 24.0), (26.0, 26.0)]
    assert metrics.mode_collapse_rate(pairs) == pytest.approx(2 / 5)
    assert metrics.mode_collapse_rate(pairs, threshold=0.5) == pytest.approx(3 / 5)
    assert math.isnan(metrics.mode_collapse_rate([]))


def test_mean_psnr_leaves_identical_images_out() -> None:
    assert metrics.mean_psnr([30.0, math.inf, 20.0]) == pytest.approx(25.0)
    assert metrics.mean_psnr([math.inf, math.inf]) == math.inf
    assert math.isnan(metrics.mean_psnr([]))


def test_gaussian_kernel_matches_opencv() -> None:
    import cv2

    expected = cv2.getGaussianKernel(11, 1.5).ravel()
    np.testing.assert_allclose(metrics.gaussian_kernel(), expected, rtol=1e-12)
