"""Safe checkpoint reading and strict loading (checkpoints.py)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sam_deblur_cli.checkpoints import filter_keys, load_strict, read_state_dict
from sam_deblur_cli.errors import CheckpointError
from sam_deblur_cli.nets import NetConfig, build_network

TINY = NetConfig(variant="map", width=8, enc_blk_nums=(1, 1), dec_blk_nums=(1, 1))


def trained_like(cfg: NetConfig = TINY) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    net = build_network(cfg)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_()  # distinct from a fresh network's init, so loading is visible
    return {k: v.clone() for k, v in net.state_dict().items()}


@pytest.mark.parametrize("layout", ["params", "params_ema", "bare", "module_prefix", "safetensors"])
def test_basicsr_checkpoints_load_strictly(tmp_path: Path, layout: str) -> None:
    sd = trained_like()
    path = tmp_path / ("net.safetensors" if layout == "safetensors" else "net.pth")
    if layout == "safetensors":
        save_file(sd, str(path))
    elif layout == "bare":
        torch.save(sd, path)
    elif layout == "module_prefix":
        torch.save({"params": {f"module.{k}": v for k, v in sd.items()}}, path)
    else:
        torch.save({layout: sd}, path)
    net = build_network(TINY)
    load_strict(net, read_state_dict(path))
    for key, value in net.state_dict().items():
        assert torch.equal(value, sd[key]), key


def test_params_win_over_params_ema(tmp_path: Path) -> None:
    sd = trained_like()
    ema = {k: v + 1 for k, v in sd.items()}
    torch.save({"params_ema": ema, "params": sd}, tmp_path / "both.pth")
    read = read_state_dict(tmp_path / "both.pth")
    assert torch.equal(read["intro.weight"], sd["intro.weight"])


def test_wrong_architecture_lists_every_kind_of_mismatch(tmp_path: Path) -> None:
    sd = trained_like(NetConfig(variant="cat", width=8, enc_blk_nums=(1, 1), dec_blk_nums=(1, 1)))
    sd["extra.weight"] = torch.zeros(3)
    torch.save({"params": sd}, tmp_path / "cat.pth")
    net = build_network(TINY)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_strict(net, read_state_dict(tmp_path / "cat.pth"))
    message = str(info.value)
    assert (
        "missing keys: pre_seg.weight, pre_seg.bias, pre_seg_in.weight, pre_seg_in.bias" in message
    )
    assert "unexpected keys: extra.weight" in message
    assert "intro.weight (checkpoint (8, 4, 3, 3), network (8, 5, 3, 3))" in message
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # untouched


def test_long_mismatch_lists_are_shortened() -> None:
    net = build_network(TINY)
    with pytest.raises(CheckpointError, match=r"missing keys: intro\.weight, .* and \d+ more"):
        load_strict(net, {"foo": torch.zeros(1)})


class _Payload:
    """Pickles as a call that would create a marker file when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_pickled_code_is_refused_and_never_runs(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = {"params": {"intro.weight": torch.zeros(1)}, "hook": _Payload(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with path.open("wb") as f:
            pickle.dump(payload, f, protocol=2)
    with pytest.raises(CheckpointError, match="contains pickled code, which is never run"):
        read_state_dict(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("missing.pth", None, "does not exist"),
        ("cut.pth", b"PK\x03\x04 truncated zip", "is truncated or damaged"),
        ("cut.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{", "not a readable safetensors"),
    ],
)
def test_unreadable_files_are_checkpoint_errors(
    tmp_path: Path, name: str, content: bytes | None, match: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        read_state_dict(path)


def test_non_tensor_entries_are_refused(tmp_path: Path) -> None:
    torch.save({"params": {"intro.weight": torch.zeros(1), "iter": 5}}, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match=r"not named tensors \(iter\)"):
        read_state_dict(tmp_path / "odd.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="no state dict"):
        read_state_dict(tmp_path / "list.pth")


def test_filter_keys_only_strips_wrapper_prefixes() -> None:
    t = torch.zeros(1)
    assert list(filter_keys({"module.intro.weight": t, "ending.bias": t})) == [
        "intro.weight",
        "ending.bias",
    ]
