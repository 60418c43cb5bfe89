"""Running a network on one image (restore.py): padding, clamping, guides, tiling, memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data
from torch import Tensor, nn

from sam_deblur_cli import restore as restore_mod
from sam_deblur_cli.errors import DeviceError, MaskError, TooLargeError, UsageError
from sam_deblur_cli.nets import NetConfig, build_network
from sam_deblur_cli.nets.tlc import set_tlc
from sam_deblur_cli.restore import (
    batch_capacity,
    estimate_peak_bytes,
    plan_tile,
    restore,
    restore_batch,
)


def random_net(variant: str, *, width: int = 8, spread: float = 0.5, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    cfg = NetConfig(variant=variant, width=width, enc_blk_nums=(1, 1, 1, 1))  # type: ignore[arg-type]
    net = build_network(cfg)
    with torch.no_grad():
        for name, param in net.named_parameters():
            if name.endswith(("beta", "gamma")):  # upstream's zeros would hide the blocks
                param.normal_(0.0, spread)
    return net


def guide_for(variant: str, h: int, w: int) -> np.ndarray | None:
    rng = np.random.default_rng(0)
    if variant == "plain":
        return None
    if variant == "cat":
        return rng.integers(0, 256, (h, w), dtype=np.uint8)
    return rng.integers(0, 4, (h, w))


def torch_guide(variant: str, guide: np.ndarray | None) -> Tensor | None:
    if guide is None:
        return None
    if variant == "cat":
        return torch.from_numpy(guide)[None, None].float() / 255
    return torch.from_numpy(guide)[None]


@pytest.mark.parametrize("variant", ["plain", "cat", "map"])
def test_odd_sizes_are_padded_and_cropped_like_the_network(variant: str) -> None:
    net = random_net(variant)
    image = np.random.default_rng(1).random((37, 53, 3), dtype=np.float32)
    guide = guide_for(variant, 37, 53)
    out = restore(net, image, guide)
    with torch.inference_mode():
        raw = net(torch.from_numpy(image).permute(2, 0, 1)[None], torch_guide(variant, guide))
    expected = raw[0].permute(1, 2, 0).clamp(0, 1).numpy()
    assert out.shape == (37, 53, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)


def test_output_is_clamped() -> None:
    net = random_net("plain", spread=2.0)
    image = np.random.default_rng(2).random((32, 48, 3), dtype=np.float32)
    with torch.inference_mode():
        raw = net(torch.from_numpy(image).permute(2, 0, 1)[None])
    assert raw.min() < 0 and raw.max() > 1  # so the clamp has work to do
    out = restore(net, image)
    assert out.min() == 0.0 and out.max() == 1.0
    np.testing.assert_allclose(out, raw[0].permute(1, 2, 0).clamp(0, 1).numpy(), atol=1e-6)


def test_bf16_runs_on_the_cpu_close_to_fp32() -> None:
    net = random_net("map", spread=0.1)
    image = np.random.default_rng(3).random((40, 40, 3), dtype=np.float32)
    guide = guide_for("map", 40, 40)
    fp32 = restore(net, image, guide)
    bf16 = restore(net, image, guide, precision="bf16")
    assert bf16.dtype == np.float32
    assert np.abs(bf16 - fp32).mean() < 0.02


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"precision": "fp16"}, UsageError, "fp16 does not run on the CPU"),
        ({"precision": "fp64"}, UsageError, "Unknown precision"),
        ({"device": "tpu"}, UsageError, "Unknown device"),
        ({"tile": 64}, UsageError, "too small"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, object], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        restore(random_net("plain"), np.zeros((16, 16, 3), np.float32), **kwargs)  # type: ignore[arg-type]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_missing_cuda_is_a_device_error() -> None:
    with pytest.raises(DeviceError, match="not available"):
        restore(random_net("plain"), np.zeros((16, 16, 3), np.float32), device="cuda:1")


def test_wrong_guides_are_refused() -> None:
    image = np.zeros((16, 20, 3), np.float32)
    with pytest.raises(UsageError, match="no masks"):
        restore(random_net("plain"), image, np.zeros((16, 20), np.uint8))
    with pytest.raises(UsageError, match="needs SAM masks"):
        restore(random_net("map"), image)
    with pytest.raises(MaskError, match="20x15 but the image is 20x16"):
        restore(random_net("map"), image, np.zeros((15, 20), np.int64))
    with pytest.raises(MaskError, match="integers"):
        restore(random_net("map"), image, np.zeros((16, 20), np.float32))
    with pytest.raises(MaskError, match="from 0"):
        restore(random_net("map"), image, np.full((16, 20), -1))
    with pytest.raises(MaskError, match="uint8"):
        restore(random_net("cat"), image, np.zeros((16, 20), np.float32))


@pytest.mark.parametrize("variant", ["plain", "cat", "map"])
def test_small_tiles_agree_with_the_whole_image(variant: str) -> None:
    net = random_net(variant, spread=0.2)
    set_tlc(net, True)
    rng = np.random.default_rng(4)
    image = rng.random((150, 260, 3), dtype=np.float32)
    guide = guide_for(variant, 150, 260)
    calls: list[tuple[int, int]] = []
    whole = restore(net, image, guide)
    tiled = restore(
        net, image, guide, tile=128, tile_overlap=32, progress=lambda *a: calls.append(a)
    )
    assert calls == [(i, 6) for i in range(1, 7)]  # 2 x 3 tiles
    assert np.abs(tiled - whole).mean() < 2 / 255


def test_map_tiles_see_the_whole_image_group_means() -> None:
    """A group spanning several tiles keeps one mean: tiling must not average per tile."""
    net = random_net("map", spread=0.0)  # blocks off: the output follows the group means
    net.mask_value = 1.0  # each pixel gets its group's mean, undiluted by the rest (R)
    image = np.zeros((64, 320, 3), np.float32)
    image[:, 160:] = 1.0  # dark on the left, bright on the right
    one_group = np.zeros((64, 320), np.int64)
    halves = (np.arange(320) >= 160).astype(np.int64)[None].repeat(64, 0)
    whole = restore(net, image, one_group)
    tiled = restore(net, image, one_group, tile=128, tile_overlap=32)
    per_half = restore(net, image, halves)  # what means taken over a part of the group give
    assert np.abs(per_half - whole).max() > 0.02
    assert np.abs(tiled - whole).max() < 0.005


def _photo() -> np.ndarray:
    rgb = Image.fromarray(data.coffee()).resize((2000, 1500), Image.Resampling.BICUBIC)
    return np.asarray(rgb, dtype=np.float32) / 255


def _seam_mask(shape: tuple[int, int], tile: int, overlap: int, band: int = 16) -> np.ndarray:
    """Pixels within ``band`` of a raw tile edge that another tile overlaps."""
    mask = np.zeros(shape, bool)
    for axis, length in enumerate(shape):
        padded = length + (-length % 16)
        spans = restore_mod._spans(padded, tile, overlap)
        edges = [s.start for s in spans[1:]] + [s.stop for s in spans[:-1]]
        for edge in edges:
            index = [slice(None), slice(None)]
            index[axis] = slice(max(edge - band, 0), edge + band)
            mask[tuple(index)] = True
    return mask


def test_tiled_photo_matches_whole_and_has_no_visible_seams() -> None:
    """2000 x 1500 photo, MAP network with TLC, 6 tiles of 1024 px.

    The network has the real layout with width 16 and one block per level instead of
    width 32 and [1, 1, 1, 28], to keep the test near 30 s on two cores.
    """
    photo = _photo()
    labels = np.minimum((photo.mean(axis=2) * 6).astype(np.int64), 5)  # 6 brightness groups
    net = random_net("map", width=16, spread=0.3)
    set_tlc(net, True)
    whole = restore(net, photo, labels)
    tiled = restore(net, photo, labels, tile=1024)
    assert ((whole == 0) | (whole == 1)).mean() < 0.2  # the clamp hides few differences
    diff = np.abs(tiled - whole).mean(axis=2)
    seams = _seam_mask(diff.shape, 1024, restore_mod.DEFAULT_OVERLAP)
    assert diff.mean() < 0.5 / 255
    assert diff[seams].mean() <= 2 * diff[~seams].mean()
    assert np.abs(whole - photo).mean() > 2 / 255  # the network really changed the photo


def test_auto_tiles_only_when_the_image_does_not_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    need = estimate_peak_bytes(1000, 1500, net_width=32)
    monkeypatch.setattr(restore_mod, "free_memory_bytes", lambda device: 10 * need)
    assert plan_tile(1000, 1500, "auto") is None
    monkeypatch.setattr(restore_mod, "free_memory_bytes", lambda device: need // 4)
    size = plan_tile(1000, 1500, "auto")
    assert size is not None and size % 16 == 0 and 128 <= size < 1500
    assert estimate_peak_bytes(min(size, 1000), size, net_width=32) <= 0.8 * need / 4
    monkeypatch.setattr(restore_mod, "free_memory_bytes", lambda device: need // 2)
    larger = plan_tile(1000, 1500, "auto")
    assert larger is not None and larger > size


def test_auto_tiles_a_restore_that_would_not_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    net = random_net("map", spread=0.2)
    set_tlc(net, True)
    image = np.random.default_rng(6).random((150, 260, 3), dtype=np.float32)
    labels = guide_for("map", 150, 260)
    whole = restore(net, image, labels, tile="auto")  # plenty of memory here: no tiles
    fits_128 = estimate_peak_bytes(128, 128, net_width=8) + 150 * 260 * 64
    monkeypatch.setattr(restore_mod, "free_memory_bytes", lambda device: int(fits_128 / 0.8))
    calls: list[tuple[int, int]] = []
    tiled = restore(net, image, labels, tile="auto", progress=lambda *a: calls.append(a))
    assert len(calls) > 1 and calls[-1] == (len(calls), len(calls))
    assert np.abs(tiled - whole).mean() < 2 / 255


def test_peak_estimate_scales_with_pixels_width_and_precision() -> None:
    base = estimate_peak_bytes(720, 1280)
    assert estimate_peak_bytes(1440, 2560) > 3.9 * base
    assert estimate_peak_bytes(720, 1280, net_width=64) > 1.9 * base
    assert estimate_peak_bytes(720, 1280, precision="fp16") < 0.6 * base
    # within the measured range: 720p at width 32 peaks near 11-13 bytes/px/channel in fp32
    assert base > 720 * 1280 * 32 * 4 * 13


class _SmallMemoryNet(nn.Module):
    """A real network that fails like CUDA does when it gets more than ``limit`` pixels."""

    guide_kind = "none"

    def __init__(self, inner: nn.Module, limit: int) -> None:
        super().__init__()
        self.inner, self.limit = inner, limit
        self.sizes: list[tuple[int, ...]] = []

    def forward(self, image: Tensor, guide: Tensor | None = None) -> Tensor:
        self.sizes.append(tuple(image.shape[-2:]))
        if image.shape[-1] * image.shape[-2] > self.limit:
            raise torch.OutOfMemoryError("simulated: CUDA out of memory")
        return self.inner(image, guide)


def test_out_of_memory_halves_the_tile_then_gives_up() -> None:
    net = _SmallMemoryNet(random_net("plain"), limit=200 * 200)
    image = np.random.default_rng(5).random((190, 390, 3), dtype=np.float32)
    out = restore(net, image)
    assert net.sizes[0] == (192, 400)  # the whole image failed first
    assert set(net.sizes[1:]) == {(192, 192)}  # then half of 400, aligned to 16
    np.testing.assert_allclose(out, restore(net.inner, image, tile=192), atol=1e-6)
    with pytest.raises(DeviceError, match="Out of memory"):
        restore(_SmallMemoryNet(random_net("plain"), limit=100), image)


def test_a_run_that_must_not_tile_fails_alone_when_out_of_memory() -> None:
    net = _SmallMemoryNet(random_net("plain"), limit=200 * 200)
    image = np.random.default_rng(5).random((190, 390, 3), dtype=np.float32)
    with pytest.raises(TooLargeError, match="does not fit in memory on cpu without tiling"):
        restore(net, image, tile_on_oom=False)
    assert net.sizes == [(192, 400)]  # the whole image only: no tile was tried
    assert TooLargeError.exit_code == 1  # an input error: a batch or eval goes on


def test_tf32_is_set_inside_the_run_and_restored_after() -> None:
    """TF32 state as torch reports it during the forward; no CUDA needed to read the flags."""
    seen: list[tuple[object, object]] = []

    class Spy(nn.Module):
        guide_kind = "none"

        def forward(self, image: Tensor, guide: Tensor | None = None) -> Tensor:
            seen.append(_tf32_flags())
            return image

    before = _tf32_flags()
    image = np.zeros((16, 16, 3), dtype=np.float32)
    for allowed in (False, True, None):
        restore(Spy(), image, tf32=allowed)
        assert _tf32_flags() == before
    assert seen[0] == _tf32_expected(False) and seen[1] == _tf32_expected(True)
    assert seen[2] == before


def _tf32_flags() -> tuple[object, object]:
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        return conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision
    return torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32


def _tf32_expected(allowed: bool) -> tuple[object, object]:
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        value = "tf32" if allowed else "ieee"
        return value, value
    return allowed, allowed


def test_label_maps_with_gaps_pool_the_gaps_like_upstream() -> None:
    """-1 (no group, from a groups .npz with gaps) is upstream's leftover mask, as padding is."""
    import oracles

    net = random_net("map")
    rng = np.random.default_rng(8)
    image = rng.random((20, 37, 3), dtype=np.float32)
    labels = rng.integers(0, 4, (20, 37))
    labels[5:9, 10:30] = -1
    ours = restore(net, image, labels)
    with torch.inference_mode():
        x = torch.from_numpy(image).permute(2, 0, 1)[None]
        ref = oracles.forward(net.state_dict(), "map", x, torch.from_numpy(labels)[None], False)
    expected = ref[0].clamp(0, 1).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- batches


def _frames(count: int, h: int, w: int) -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    return [rng.random((h, w, 3), dtype=np.float32) for _ in range(count)]


def _frame_guides(variant: str, count: int, h: int, w: int) -> list[np.ndarray | None]:
    """A different guide per frame; for MAP, frame 1 has lost group 2 (groups 0, 1, 3)
    and frame 2 has fewer groups than the others."""
    rng = np.random.default_rng(12)
    if variant == "plain":
        return [None] * count
    if variant == "cat":
        return [rng.integers(0, 256, (h, w), dtype=np.uint8) for _ in range(count)]
    maps = [rng.integers(0, 5, (h, w)) for _ in range(count)]
    maps[1][maps[1] == 2] = 3  # a group that vanished in this frame
    maps[2] = rng.integers(0, 2, (h, w))
    return list(maps)


@pytest.mark.parametrize("tlc", [False, True], ids=["no-tlc", "tlc"])
@pytest.mark.parametrize("variant", ["plain", "cat", "map"])
def test_a_batch_gives_what_each_image_gives_alone(variant: str, tlc: bool) -> None:
    net = random_net(variant)
    set_tlc(net, tlc)
    # TLC's windows (384 px at full size) must be smaller than the image to change anything
    h, w = (21, 403) if tlc else (37, 53)
    images = _frames(4, h, w)
    guides = _frame_guides(variant, 4, h, w)
    if variant == "map":
        assert 2 not in guides[1] and int(guides[2].max()) == 1  # type: ignore[union-attr,operator]
    batched = restore_batch(net, images, guides if variant != "plain" else None)
    assert len(batched) == 4
    for image, guide, out in zip(images, guides, batched, strict=True):
        alone = restore(net, image, guide)
        assert out.shape == (h, w, 3) and out.dtype == np.float32
        np.testing.assert_allclose(out, alone, rtol=0, atol=1e-5)
    # the frames really differ, so a mix-up between them would show
    assert np.abs(batched[0] - batched[1]).mean() > 1e-3


class _CountingNet(nn.Module):
    """A network that records the batch size of every call and runs out of memory above
    ``limit`` images at once."""

    guide_kind = "none"

    def __init__(self, inner: nn.Module, limit: int) -> None:
        super().__init__()
        self.inner, self.limit = inner, limit
        self.batches: list[int] = []

    def forward(self, image: Tensor, guide: Tensor | None = None) -> Tensor:
        self.batches.append(image.shape[0])
        if image.shape[0] > self.limit:
            raise torch.OutOfMemoryError("simulated: CUDA out of memory")
        return self.inner(image, guide)


def test_a_batch_that_runs_out_of_memory_goes_one_image_at_a_time() -> None:
    net = _CountingNet(random_net("plain"), limit=1)
    images = _frames(3, 32, 48)
    out = restore_batch(net, images)
    assert net.batches == [3, 1, 1, 1]
    for image, result in zip(images, out, strict=True):
        np.testing.assert_allclose(result, restore(net.inner, image), atol=1e-6)


def test_batches_are_as_large_as_the_memory_estimate_allows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    net = _CountingNet(random_net("plain"), limit=8)
    images = _frames(5, 32, 48)
    need = estimate_peak_bytes(32, 48)  # the wrapper has no intro: restore assumes width 32
    monkeypatch.setattr(restore_mod, "free_memory_bytes", lambda device: int(2.5 * need / 0.8))
    assert batch_capacity(32, 48) == 2
    restore_batch(net, images)
    assert net.batches == [2, 2, 1]
    net.batches.clear()
    monkeypatch.setattr(restore_mod, "free_memory_bytes", lambda device: need)
    assert batch_capacity(32, 48) == 1
    restore_batch(net, images)
    assert net.batches == [1] * 5  # a batch of two would not fit: restore, image by image
    monkeypatch.setattr(restore_mod, "free_memory_bytes", lambda device: 1000 * need)
    assert batch_capacity(32, 48) == restore_mod.MAX_AUTO_BATCH


def test_a_batch_checks_sizes_and_every_guide() -> None:
    net = random_net("map")
    images = _frames(2, 32, 32)
    with pytest.raises(UsageError, match="one size"):
        restore_batch(net, [images[0], np.zeros((32, 48, 3), np.float32)], [None, None])
    with pytest.raises(UsageError, match="one per image"):
        restore_batch(net, images, [np.zeros((32, 32), np.int64)])
    with pytest.raises(MaskError, match="16x16"):
        restore_batch(net, images, [np.zeros((32, 32), np.int64), np.zeros((16, 16), np.int64)])
    with pytest.raises(UsageError, match="needs SAM masks"):
        restore_batch(net, images)
    assert restore_batch(net, [], []) == []


def test_strict_fp32_on_cuda_runs_nchw_and_everything_else_channels_last() -> None:
    from sam_deblur_cli.restore import Target, _layout, memory_format_for

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert memory_format_for(Target(cuda, torch.float32), False) == torch.contiguous_format
    for target, tf32 in [
        (Target(cuda, torch.float32), None),
        (Target(cuda, torch.float32), True),
        (Target(cuda, torch.bfloat16), False),
        (Target(cpu, torch.float32), False),
    ]:
        assert memory_format_for(target, tf32) == torch.channels_last, (target, tf32)
    net = build_network(NetConfig(variant="plain", width=8, enc_blk_nums=(1, 1, 1, 1)))
    with _layout(net, Target(cuda, torch.float32), False):
        assert net.memory_format == torch.contiguous_format
    assert net.memory_format == torch.channels_last and "memory_format" not in vars(net)
