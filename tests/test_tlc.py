"""TLC local pooling (upstream.md section 6) against a window-by-window loop."""

from __future__ import annotations

import oracles
import pytest
import torch
from torch import nn

from sam_deblur_cli.nets import NetConfig, build_network
from sam_deblur_cli.nets.nafnet import NAFBlock
from sam_deblur_cli.nets.tlc import LocalAvgPool2d, local_mean, set_tlc


@pytest.mark.parametrize(
    ("shape", "kernel"),
    [
        ((2, 3, 12, 17), (5, 7)),  # odd and even leftovers: asymmetric replicate padding
        ((1, 4, 12, 17), (20, 6)),  # taller than the map: k1 = h
        ((1, 2, 9, 30), (4, 40)),  # wider than the map: k2 = w
        ((1, 2, 9, 9), (9, 9)),  # covers the map: global mean
        ((1, 2, 8, 8), (30, 30)),
    ],
)
def test_local_mean_matches_window_loop(shape: tuple[int, ...], kernel: tuple[int, int]) -> None:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0)) * 4 + 2
    ours = local_mean(x, kernel)
    ref = oracles.tlc_pool_loop(x, kernel)
    torch.testing.assert_close(ours.expand_as(x), ref.expand_as(x), rtol=0, atol=1e-5)


def test_local_mean_is_global_only_when_the_kernel_covers_both_axes() -> None:
    x = torch.randn(1, 1, 10, 20)
    assert local_mean(x, (10, 20)).shape == (1, 1, 1, 1)
    assert local_mean(x, (40, 19)).shape == (1, 1, 10, 20)


def test_local_mean_of_bfloat16_sums_in_float32() -> None:
    x = torch.rand(1, 2, 64, 300, generator=torch.Generator().manual_seed(1)) + 100
    ours = local_mean(x.bfloat16(), (16, 32))
    assert ours.dtype == torch.bfloat16
    ref = oracles.tlc_pool_loop(x.bfloat16().float(), (16, 32))
    # bf16 prefix sums over 300 values near 100 would be off by whole units
    torch.testing.assert_close(ours.float(), ref, rtol=0, atol=0.5)


def tiny(variant: str) -> nn.Module:
    torch.manual_seed(0)
    net = build_network(NetConfig(variant=variant, width=8, enc_blk_nums=(1, 1, 1, 2)))  # type: ignore[arg-type]
    with torch.no_grad():
        for name, param in net.named_parameters():
            if name.endswith(("beta", "gamma")):
                param.normal_(0.0, 0.5)
    return net


def pools(net: nn.Module) -> dict[str, nn.Module]:
    return {name: m.sca[0] for name, m in net.named_modules() if isinstance(m, NAFBlock)}


@pytest.mark.parametrize("variant", ["plain", "cat", "map"])
def test_set_tlc_fixes_the_spec_kernels(variant: str) -> None:
    net = tiny(variant)
    set_tlc(net, True)
    levels = 4  # len(enc_blk_nums)
    expected = {}
    for name in pools(net):
        group, index = name.split(".")[:2]
        level = {"encoders": int(index), "middle_blks": levels}.get(group, levels - 1 - int(index))
        expected[name] = oracles.tlc_kernel(level)
    assert {n: p.kernel for n, p in pools(net).items()} == expected
    assert expected["middle_blks.0"] == (24, 24) and expected["decoders.3.0"] == (384, 384)
    set_tlc(net, False)
    assert all(isinstance(p, nn.AdaptiveAvgPool2d) for p in pools(net).values())


def test_tlc_changes_outputs_only_beyond_the_window() -> None:
    net = tiny("plain")
    small = torch.rand(1, 3, 64, 96)
    # dark on the left, bright on the right: local means differ from the global one
    large = torch.rand(1, 3, 32, 1000) * torch.linspace(0, 1, 1000) ** 2
    with torch.inference_mode():
        global_small, global_large = net(small), net(large)
        set_tlc(net, True)
        local_small, local_large = net(small), net(large)
    torch.testing.assert_close(local_small, global_small, rtol=0, atol=1e-6)
    assert (local_large - global_large).abs().max() > 1e-3
    assert isinstance(pools(net)["encoders.0.0"], LocalAvgPool2d)
    assert not any(p.requires_grad for p in pools(net)["encoders.0.0"].parameters())
    assert set(net.state_dict()) == set(tiny("plain").state_dict())  # no new keys
