"""Networks against the spec-written oracles (tests/oracles.py) and upstream's key layout."""

from __future__ import annotations

import os
import subprocess
import sys

import oracles
import pytest
import torch

from sam_deblur_cli.nets import MASK_VALUE_UPSTREAM, NetConfig, build_network
from sam_deblur_cli.nets.map import SegNAFNet, mask_average, sample_dropped
from sam_deblur_cli.nets.tlc import set_tlc

TINY = {"width": 8, "enc_blk_nums": (1, 1, 1, 2), "middle_blk_num": 1, "dec_blk_nums": (1, 1, 1, 1)}


def random_net(variant: str, seed: int = 0) -> torch.nn.Module:
    """A tiny network whose every branch matters: upstream initialises beta/gamma to zero."""
    torch.manual_seed(seed)
    net = build_network(NetConfig(variant=variant, **TINY))  # type: ignore[arg-type]
    with torch.no_grad():
        for name, param in net.named_parameters():
            if name.endswith(("beta", "gamma")):
                param.normal_(0.0, 0.5)
            elif ".norm" in name:
                param.add_(torch.randn_like(param) * 0.2)
    return net


def make_guide(variant: str, h: int, w: int, labels: str = "vanished") -> torch.Tensor | None:
    gen = torch.Generator().manual_seed(1)
    if variant == "plain":
        return None
    if variant == "cat":
        return torch.randint(0, 256, (1, 1, h, w), generator=gen).float() / 255
    if labels == "single":
        return torch.zeros(1, h, w, dtype=torch.long)
    # groups 0, 1, 3 and 4 used, group 2 vanished
    return torch.tensor([0, 1, 3, 4])[torch.randint(0, 4, (1, h, w), generator=gen)]


# A multiple of 16 and not; both wider than the level-0 TLC window (384), so TLC pools locally.
SIZES = [(16, 400), (37, 401)]


@pytest.mark.parametrize(
    "layout", [torch.channels_last, torch.contiguous_format], ids=["channels_last", "nchw"]
)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("tlc", [False, True], ids=["global", "tlc"])
@pytest.mark.parametrize("variant", ["plain", "cat", "map"])
def test_network_matches_oracle(
    variant: str, tlc: bool, size: tuple[int, int], layout: torch.memory_format
) -> None:
    net = random_net(variant)
    set_tlc(net, tlc)
    net.memory_format = layout  # both layouts (and LayerNorm paths) compute upstream's network
    image = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(2))
    image *= torch.linspace(0, 1, size[1]) ** 2  # dark to bright, so local means matter
    guide = make_guide(variant, *size)
    with torch.inference_mode():
        ours = net(image, guide)
        ref = oracles.forward(net.state_dict(), variant, image, guide, tlc)
    assert ours.shape == (1, 3, *size)
    assert ref.abs().max() > 0.5  # the random branches really change the image
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("labels", ["vanished", "single"])
def test_map_network_handles_odd_label_maps(labels: str) -> None:
    net = random_net("map", seed=3)
    image = torch.rand(1, 3, 37, 53)
    guide = make_guide("map", 37, 53, labels)
    with torch.inference_mode():
        ours = net(image, guide)
        ref = oracles.forward(net.state_dict(), "map", image, guide, tlc=False)
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


def test_map_network_uses_the_masks() -> None:
    net = random_net("map", seed=4)
    image = torch.rand(1, 3, 32, 32)
    image[..., 16:] += 4  # two regions whose features differ, as SAM's regions do
    halves = torch.zeros(1, 32, 32, dtype=torch.long)
    halves[..., 16:] = 1
    with torch.inference_mode():
        one = net(image, make_guide("map", 32, 32, "single"))
        many = net(image, halves)
    # masks of value 1/255 move the MAP channels by (mean_g - R) / 255 only
    assert (one - many).abs().max() > 1e-3


def _label_case(case: str) -> tuple[torch.Tensor, torch.Tensor]:
    """seg 1 x 2 x H x W and labels 1 x H x W for one MAP situation (-1: padding)."""
    gen = torch.Generator().manual_seed(5)
    h, w = 40, 56
    seg = torch.randn(1, 2, h, w, generator=gen) * 3 + 1
    if case == "one group":
        labels = torch.zeros(1, h, w, dtype=torch.long)
    elif case == "200 groups":
        labels = torch.randint(0, 200, (1, h, w), generator=gen)
    else:  # groups 0, 2, 5 used: 1, 3 and 4 vanished
        labels = torch.tensor([0, 2, 5])[torch.randint(0, 3, (1, h, w), generator=gen)]
    if case != "no padding":
        labels[:, 33:, :] = -1  # the padding band: pixels in no group
        labels[:, :, 50:] = -1
    return seg, labels


MAP_CASES = ["padding + vanished group", "no padding", "one group", "200 groups"]


@pytest.mark.parametrize("scale", [255.0, 1.0], ids=["value 1/255", "value 1"])
@pytest.mark.parametrize("case", MAP_CASES)
def test_mask_average_matches_dense_oracle(case: str, scale: float) -> None:
    seg, labels = _label_case(case)
    value = MASK_VALUE_UPSTREAM if scale == 255.0 else 1.0
    ours = mask_average(seg, labels, mask_value=value)
    ref = oracles.dense_map(seg, oracles.label_masks(labels[0]), scale)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
    assert torch.isfinite(ours).all()


def test_mask_average_at_1_255_is_the_formula_of_the_spec() -> None:
    """upstream.md 4 written out in float64 for two groups and padding."""
    seg = torch.tensor([[[[1.0, 2.0, 10.0], [4.0, 0.0, 7.0]]]])
    labels = torch.tensor([[[0, 0, 1], [0, -1, -1]]])
    a = 1 / 255
    covered, padding = (1 + 2 + 4) + 10, 0 + 7
    r = ((1 - a) * covered + padding) / ((1 - a) * 4 + 2)
    g0, g1 = a * 7 / 3 + (1 - a) * r, a * 10 + (1 - a) * r
    expect = torch.tensor([[g0, g0, g1], [g0, r, r]], dtype=torch.float64)
    ours = mask_average(seg, labels)
    torch.testing.assert_close(ours[0, 0].double(), expect, rtol=0, atol=1e-6)
    # about R + (mean - R) / 255: nowhere near the group means themselves
    assert abs(float(ours[0, 0, 0, 2]) - 10.0) > 5


def test_mask_value_1_and_1_255_give_different_networks() -> None:
    """The suite must notice if the mask value stops reaching the MAP unit."""
    image = torch.rand(1, 3, 37, 53, generator=torch.Generator().manual_seed(6))
    guide = make_guide("map", 37, 53)
    outs = {}
    for value in (MASK_VALUE_UPSTREAM, 1.0):
        torch.manual_seed(4)
        net = build_network(NetConfig(variant="map", mask_value=value, **TINY))  # type: ignore[arg-type]
        with torch.no_grad():
            net.pre_seg.weight.mul_(20)  # features that differ clearly between groups
        with torch.inference_mode():
            outs[value] = net(image, guide)
        ref = oracles.forward(net.state_dict(), "map", image, guide, False, 255.0 / (value * 255.0))
        torch.testing.assert_close(outs[value], ref, rtol=0, atol=1e-5)
    assert (outs[MASK_VALUE_UPSTREAM] - outs[1.0]).abs().max() > 1e-3


def test_mask_average_of_a_batch_keeps_images_apart() -> None:
    seg = torch.stack([torch.full((1, 4, 4), 1.0), torch.full((1, 4, 4), 5.0)])
    labels = torch.zeros(2, 4, 4, dtype=torch.long)
    labels[1, :, 2:] = 1
    out = mask_average(seg, labels)
    torch.testing.assert_close(out[0], torch.full((1, 4, 4), 1.0))
    torch.testing.assert_close(out[1], torch.full((1, 4, 4), 5.0))


@pytest.mark.parametrize("p", [0.5, 0.2, 0.9])
def test_mask_dropout_drops_floor_p_m_present_groups_per_sample(p: float) -> None:
    gen = torch.Generator().manual_seed(7)
    labels = torch.randint(0, 9, (3, 20, 24), generator=gen)
    labels[1][labels[1] == 4] = 0  # sample 1 lacks group 4: M = 8 there, 9 elsewhere
    labels[2, :, 20:] = -1  # padding is no group
    dropped = sample_dropped(labels, p, gen)
    assert dropped.shape == (3, 9)
    for i, groups in enumerate([9, 8, 9]):
        assert int(dropped[i].sum()) == int(p * groups)
    assert not dropped[1, 4]  # an absent group is never "dropped"
    draws = {tuple(sample_dropped(labels, p, gen)[0].tolist()) for _ in range(20)}
    assert len(draws) > 1  # chosen at random, not always the same groups


def test_mask_dropout_equals_the_dense_oracle_with_the_same_dropped_set() -> None:
    seg, labels = _label_case("padding + vanished group")
    dropped = torch.zeros(1, 6, dtype=torch.bool)
    dropped[0, [0, 5]] = True  # two of the three present groups (0, 2, 5)
    ours = mask_average(seg, labels, dropped=dropped)
    ref = oracles.dense_map(seg, oracles.label_masks(labels[0]), 255.0, dropped=[0, 5])
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
    # their pixels get R, the pool of everything uncovered
    r = ours[0, :, 35, 52]
    chosen = ours[0, :, labels[0] == 5]
    torch.testing.assert_close(chosen, r[:, None].expand_as(chosen))


def test_training_network_applies_mask_dropout_and_eval_does_not() -> None:
    torch.manual_seed(8)
    net = SegNAFNet(mask_dropout=0.5, **TINY)  # type: ignore[arg-type]
    image = torch.rand(2, 3, 32, 48)
    labels = torch.randint(0, 6, (2, 32, 48))
    net.train()
    torch.manual_seed(9)
    expect = sample_dropped(labels, 0.5)
    torch.manual_seed(9)
    with torch.no_grad():
        seg = net.mask_average(image, labels)
        features = net.pre_seg_in(net.pre_seg(image))
    for i in range(2):
        ref = oracles.dense_map(
            features[i : i + 1], oracles.label_masks(labels[i]), 255.0,
            dropped=expect[i].nonzero()[:, 0].tolist(),
        )  # fmt: skip
        torch.testing.assert_close(seg[i : i + 1], ref, rtol=0, atol=1e-5)
    net.eval()
    with torch.no_grad():
        plain = net.mask_average(image, labels)
    torch.testing.assert_close(plain, mask_average(features, labels))


def test_mask_average_passes_gradients() -> None:
    """Training differentiates through the MAP unit (float64 gradcheck)."""
    seg = torch.randn(2, 2, 6, 7, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 3, (2, 6, 7))
    labels[:, :, 6] = -1
    dropped = torch.tensor([[True, False, False], [False, False, False]])
    assert torch.autograd.gradcheck(lambda x: mask_average(x, labels, dropped=dropped), (seg,))


def test_guide_kinds_and_wrong_guides_are_refused() -> None:
    """Plain ValueErrors: a wrong guide here is a caller's bug (restore checks users' masks)."""
    image = torch.rand(1, 3, 16, 16)
    nets = {v: random_net(v) for v in ("plain", "cat", "map")}
    assert [n.guide_kind for n in nets.values()] == ["none", "segmask", "labels"]
    with pytest.raises(ValueError, match="no masks"):
        nets["plain"](image, torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValueError, match="segmask"):
        nets["cat"](image)
    with pytest.raises(ValueError, match="SAM masks"):
        nets["map"](image)
    with pytest.raises(ValueError, match="integer"):
        nets["map"](image, torch.zeros(1, 16, 16))
    with pytest.raises(ValueError, match="make masks for this image"):
        nets["map"](image, torch.zeros(1, 16, 17, dtype=torch.long))


def test_build_network_is_eval_float32_cpu() -> None:
    net = random_net("map")
    assert not net.training
    assert {(p.dtype, p.device.type) for p in net.parameters()} == {(torch.float32, "cpu")}
    with pytest.raises(ValueError, match="levels"):
        build_network(NetConfig(enc_blk_nums=(1, 1), dec_blk_nums=(1,)))


def expected_upstream_shapes(variant: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape for width 32, enc [1,1,1,28], middle 1, dec [1,1,1,1], read off upstream.md."""
    in_ch = {"plain": 3, "cat": 4, "map": 5}[variant]
    shapes: dict[str, tuple[int, ...]] = {
        "intro.weight": (32, in_ch, 3, 3),
        "intro.bias": (32,),
        "ending.weight": (3, 32, 3, 3),
        "ending.bias": (3,),
    }

    def block(prefix: str, c: int) -> None:
        for norm in ("norm1", "norm2"):
            shapes[f"{prefix}.{norm}.weight"] = shapes[f"{prefix}.{norm}.bias"] = (c,)
        for conv, cin, cout, k in [
            ("conv1", c, 2 * c, 1),
            ("conv3", c, c, 1),
            ("sca.1", c, c, 1),
            ("conv4", c, 2 * c, 1),
            ("conv5", c, c, 1),
        ]:
            shapes[f"{prefix}.{conv}.weight"] = (cout, cin, k, k)
            shapes[f"{prefix}.{conv}.bias"] = (cout,)
        shapes[f"{prefix}.conv2.weight"] = (2 * c, 1, 3, 3)  # depthwise
        shapes[f"{prefix}.conv2.bias"] = (2 * c,)
        shapes[f"{prefix}.beta"] = shapes[f"{prefix}.gamma"] = (1, c, 1, 1)

    chan = 32
    for i, num in enumerate([1, 1, 1, 28]):
        for b in range(num):
            block(f"encoders.{i}.{b}", chan)
        shapes[f"downs.{i}.weight"] = (2 * chan, chan, 2, 2)
        shapes[f"downs.{i}.bias"] = (2 * chan,)
        chan *= 2
    block("middle_blks.0", chan)
    for i in range(4):
        shapes[f"ups.{i}.0.weight"] = (2 * chan, chan, 1, 1)
        chan //= 2
        block(f"decoders.{i}.0", chan)
    if variant == "map":
        shapes.update(
            {
                "pre_seg.weight": (2, 3, 3, 3),
                "pre_seg.bias": (2,),
                "pre_seg_in.weight": (2, 2, 1, 1),
                "pre_seg_in.bias": (2,),
            }
        )
    return shapes


@pytest.mark.parametrize("variant", ["plain", "cat", "map"])
def test_real_architecture_has_upstream_keys(variant: str) -> None:
    net = build_network(NetConfig(variant=variant))  # type: ignore[arg-type]
    ours = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert ours == expected_upstream_shapes(variant)
    assert "encoders.3.27.conv5.bias" in ours and "decoders.3.0.conv5.bias" in ours
    count = sum(p.numel() for p in net.parameters())
    # 17,111,907 is the published NAFNet-GoPro-width32 size; CAT adds one intro input
    # channel (32 * 9), MAP two (2 * 32 * 9) plus pre_seg (56) and pre_seg_in (6).
    assert count == {"plain": 17_111_907, "cat": 17_112_195, "map": 17_112_545}[variant]


_MAP_12MP = """
import torch
from sam_deblur_cli.nets.map import mask_average

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))

gen = torch.Generator().manual_seed(0)
seg = torch.rand(1, 2, 3000, 4000, generator=gen)
labels = torch.randint(0, 200, (1, 3000, 4000), generator=gen)
labels[:, :, -16:] = -1
mask_average(seg[:, :, :64, :64], labels[:, :64, :64])  # allocator warm-up
base = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak (VmHWM) to the current RSS
out = mask_average(seg, labels)
extra = status("VmHWM") - base
a = 1 / 255
flat, lab = seg[0].double().reshape(2, -1), labels[0].reshape(-1)
pad = lab == -1
r = ((1 - a) * flat[:, ~pad].sum(1) + flat[:, pad].sum(1)) / ((1 - a) * (~pad).sum() + pad.sum())
for g in (-1, 0, 199):
    sel = labels[0] == g
    want = r if g < 0 else a * seg[0, :, sel].double().mean(1) + (1 - a) * r
    got = out[0, :, sel].double()
    assert torch.allclose(got, want[:, None].expand_as(got), atol=1e-6)
print(extra / seg.nbytes)
"""


@pytest.mark.subprocess
def test_mask_average_at_12mp_with_200_groups_stays_lean() -> None:
    """4000 x 3000, 200 groups: upstream's broadcast would need ~19 GB; ours a few maps."""
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("needs Linux /proc to measure the peak memory of a child process")
    run = subprocess.run(
        [sys.executable, "-c", _MAP_12MP], capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stderr
    # extra peak, output included, in units of one H x W x C float32 feature map
    assert float(run.stdout) < 3.5
