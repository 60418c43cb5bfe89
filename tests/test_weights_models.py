"""weights/models.py: one loader builds and strictly loads any entry, deblur network or SAM."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from tiny_sam import build_tiny_sam, register_tiny_sam, write_tiny_sam_manifest

from sam_deblur_cli import weights
from sam_deblur_cli.errors import CheckpointError, SetupError
from sam_deblur_cli.masks import sam
from sam_deblur_cli.weights import models


@pytest.fixture
def manifest(tmp_path: Path) -> weights.Manifest:
    register_tiny_sam()
    return weights.load_manifest(write_tiny_sam_manifest(tmp_path / "models"))


def assert_same_weights(module: torch.nn.Module, reference: dict[str, torch.Tensor]) -> None:
    loaded = module.state_dict()
    assert loaded.keys() == reference.keys()
    for key, value in reference.items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0, msg=key)


def test_load_gives_the_checkpoint_of_a_sam_and_of_a_deblur_entry(
    manifest: weights.Manifest, tmp_path: Path
) -> None:
    sam_model = models.load(manifest.get("sam-tiny"), tmp_path / "models" / "sam_tiny.pth")
    assert not sam_model.training
    assert_same_weights(sam_model, build_tiny_sam(0).state_dict())

    entry = manifest.get("segnafnet-tiny")
    torch.manual_seed(3)
    reference = {k: torch.randn_like(v) for k, v in models.build(entry).state_dict().items()}
    torch.save({"params": reference}, tmp_path / "net.pth")  # the BasicSR wrapping
    net = models.load(entry, tmp_path / "net.pth")
    assert not net.training and type(net).__name__ == "SegNAFNet"
    assert_same_weights(net, reference)


def test_a_config_replaces_the_entry_network(manifest: weights.Manifest, tmp_path: Path) -> None:
    entry = manifest.get("segnafnet-tiny")
    assert entry.net is not None
    config = dataclasses.replace(entry.net, mask_value=0.5)
    built = models.build(entry, config=config)
    assert built.mask_value == 0.5 != models.build(entry).mask_value
    with pytest.raises(ValueError, match="SAM entry"):
        models.build(manifest.get("sam-tiny"), config=config)


def test_check_accepts_a_fitting_file_and_names_the_keys_of_one_that_does_not(
    manifest: weights.Manifest, tmp_path: Path
) -> None:
    sam_file = tmp_path / "models" / "sam_tiny.pth"
    models.check(manifest.get("sam-tiny"), sam_file)
    with pytest.raises(CheckpointError, match="missing keys"):
        models.check(manifest.get("nafnet-tiny"), sam_file)


def test_an_unknown_sam_architecture_is_one_error_before_any_download(tmp_path: Path) -> None:
    path = write_tiny_sam_manifest(tmp_path / "models")
    text = path.read_text().replace('arch = "', 'arch = "vit_missing', 1)
    path.write_text(text)
    entry = weights.load_manifest(path).get("sam-tiny")
    assert entry.arch is not None and entry.arch.startswith("vit_missing")
    messages = []
    for attempt in (
        lambda: weights.import_weights(entry, tmp_path / "models" / "sam_tiny.pth"),
        lambda: sam.load_sam(entry),  # nothing imported: the weights would be missing too
        lambda: models.build(entry),
    ):
        with pytest.raises(SetupError) as info:
            attempt()
        assert type(info.value) is SetupError
        messages.append(str(info.value))
    assert len(set(messages)) == 1
    assert f"names the SAM architecture {entry.arch!r}" in messages[0]
    assert "vit_b" in messages[0] and "fix the manifest" in messages[0]
    assert weights.locate(entry) is None


def assert_identical(ours: torch.nn.Module, stock: torch.nn.Module) -> None:
    """Every parameter and buffer (non-persistent ones too) equal in value, dtype, device,
    layout and requires_grad; the same training mode everywhere."""
    for kind in ("named_parameters", "named_buffers"):
        got, want = dict(getattr(ours, kind)()), dict(getattr(stock, kind)())
        assert got.keys() == want.keys(), kind
        for key, value in want.items():
            mine = got[key]
            assert (mine.dtype, mine.device, mine.shape) == (value.dtype, value.device, value.shape)
            assert mine.is_contiguous() and mine.requires_grad == value.requires_grad, key
            assert torch.equal(mine, value), key
    assert [m.training for m in ours.modules()] == [m.training for m in stock.modules()]


@pytest.mark.parametrize("arch", ["tiny", "vit_b"])
def test_load_equals_segment_anythings_builder_loading_the_same_file(
    tmp_path: Path, arch: str
) -> None:
    from segment_anything import sam_model_registry

    path = tmp_path / "sam.pth"
    if arch == "tiny":
        arch = register_tiny_sam()
        torch.save(build_tiny_sam(seed=5).state_dict(), path)
    else:  # a ViT-B-sized random checkpoint (the published one has these shapes)
        with torch.device("meta"):
            shapes = sam_model_registry[arch]().state_dict()
        torch.manual_seed(5)
        torch.save({k: torch.rand(v.shape) for k, v in shapes.items()}, path)
    entry = dataclasses.replace(load_entry(tmp_path), arch=arch)
    ours = models.load(entry, path)
    if arch == "vit_b":
        stock = sam_model_registry[arch](checkpoint=str(path))
    else:  # the tiny builder refuses a checkpoint: load it the way _build_sam does
        stock = sam_model_registry[arch]()
        stock.load_state_dict(torch.load(path))
    assert_identical(ours, stock)


def load_entry(tmp_path: Path) -> weights.Entry:
    register_tiny_sam()
    return weights.load_manifest(write_tiny_sam_manifest(tmp_path / "models")).get("sam-tiny")


def test_load_initialises_nothing(manifest: weights.Manifest, tmp_path: Path) -> None:
    """Initial weights cost time and draw from the global generator; a load draws nothing."""
    entry = manifest.get("segnafnet-tiny")
    torch.save(models.build(entry).state_dict(), tmp_path / "net.pth")
    for name, path in (("sam-tiny", tmp_path / "models" / "sam_tiny.pth"), (entry.name, None)):
        torch.manual_seed(0)
        expected = torch.rand(4)
        torch.manual_seed(0)
        models.load(manifest.get(name), path or tmp_path / "net.pth")
        assert torch.equal(torch.rand(4), expected), name


def test_a_half_precision_checkpoint_loads_as_float32(
    manifest: weights.Manifest, tmp_path: Path
) -> None:
    entry = manifest.get("nafnet-tiny")
    state = {k: v.half() for k, v in models.build(entry).state_dict().items()}
    torch.save(state, tmp_path / "half.pth")
    net = models.load(entry, tmp_path / "half.pth")
    assert {p.dtype for p in net.state_dict().values()} == {torch.float32}
    assert_same_weights(net, {k: v.float() for k, v in state.items()})


def test_buffers_a_meta_build_leaves_are_restored_and_unknown_ones_refused(
    tmp_path: Path,
) -> None:
    from segment_anything import sam_model_registry

    stock = sam_model_registry[register_tiny_sam()]()
    with torch.device("meta"):
        skeleton = sam_model_registry[register_tiny_sam()]()
    for name in ("pixel_mean", "pixel_std"):  # as a torch that reaches torch.Tensor(list) would
        skeleton.register_buffer(name, torch.empty(3, 1, 1, device="meta"), persistent=False)
    skeleton.load_state_dict(stock.state_dict(), assign=True)
    models.restore_buffers(skeleton)
    assert_identical(skeleton, stock)
    assert skeleton.state_dict().keys() == stock.state_dict().keys()  # still non-persistent

    skeleton.register_buffer("unknown", torch.empty(1, device="meta"))
    with pytest.raises(RuntimeError, match="unknown"):
        models.restore_buffers(skeleton)


def test_check_maps_zip_files_and_still_reads_the_legacy_format(
    manifest: weights.Manifest, tmp_path: Path
) -> None:
    from sam_deblur_cli.checkpoints import read_state_dict

    entry = manifest.get("nafnet-tiny")
    state = models.build(entry).state_dict()
    torch.save(state, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    torch.save(state, tmp_path / "zip.pth")
    for name in ("legacy.pth", "zip.pth"):
        models.check(entry, tmp_path / name)
        assert_same_weights(models.load(entry, tmp_path / name), state)
        assert read_state_dict(tmp_path / name, mmap=True).keys() == state.keys()
