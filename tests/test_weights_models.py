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
