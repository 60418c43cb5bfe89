"""--sam-precision: SAM's encoder in bf16/fp16 on CUDA, opt-in, in the cache key and notes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tiny_sam import build_tiny_sam, register_tiny_sam, write_tiny_sam_manifest

from sam_deblur_cli import weights
from sam_deblur_cli.cli import main
from sam_deblur_cli.errors import UsageError
from sam_deblur_cli.masks import MaskGenerator
from sam_deblur_cli.masks.cache import cache_key
from sam_deblur_cli.masks.precision import (
    apply_sam_precision,
    check_sam_precision,
    precision_departures,
)


def test_reduced_precision_is_refused_off_cuda_and_unknown_names_everywhere() -> None:
    check_sam_precision("fp32", "cpu")
    check_sam_precision("fp32-sdpa", "cpu")  # float32 still: on any device
    check_sam_precision("bf16", "cuda:0")
    check_sam_precision("fp16", "cuda")
    for precision, device in (("bf16", "cpu"), ("fp16", "mps")):
        with pytest.raises(UsageError, match=f"--sam-precision {precision} runs SAM on a CUDA"):
            check_sam_precision(precision, device)
    with pytest.raises(UsageError, match="use one of fp32, fp32-sdpa, bf16, fp16"):
        check_sam_precision("int8", "cuda")


def _encoded(sam: Any, precision: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One random image's embedding in fp32, in ``precision``, then in fp32 again."""
    image = torch.rand(1, 3, 1024, 1024) * 255
    found = []
    with torch.inference_mode():
        for step in ("fp32", precision, "fp32"):
            apply_sam_precision(sam, step)
            found.append(sam.image_encoder(sam.preprocess(image)))
    return found[0], found[1], found[2]


def test_the_encoder_runs_under_autocast_and_hands_on_float32(one_torch_thread: None) -> None:
    """On the CPU for the test (autocast works there; the option allows CUDA only)."""
    sam = build_tiny_sam(0)
    fp32, bf16, again = _encoded(sam, "bf16")
    assert bf16.dtype == torch.float32 and bf16.shape == fp32.shape
    assert not torch.equal(bf16, fp32)  # the encoder really ran in bf16
    torch.testing.assert_close(bf16, fp32, rtol=0.1, atol=0.1)
    assert torch.equal(again, fp32)  # fp32 restores the published encoder exactly
    assert set(sam.state_dict()) == set(build_tiny_sam(0).state_dict())


@pytest.mark.parametrize(
    ("size", "window"), [((14, 14), (14, 14)), ((32, 24), (32, 24)), ((16, 16), (8, 8))]
)
def test_fused_attention_matches_segment_anythings_attention(
    size: tuple[int, int], window: tuple[int, int]
) -> None:
    """The oracle is segment_anything's own Attention (windowed 14 x 14, a global 32 x 24
    grid, and rel-pos tables of another size, which get_rel_pos interpolates)."""
    from segment_anything.modeling.image_encoder import Attention

    from sam_deblur_cli.masks.precision import _fused_attention

    torch.manual_seed(0)
    attn = Attention(48, num_heads=3, use_rel_pos=True, input_size=window).eval()
    for table in (attn.rel_pos_h, attn.rel_pos_w):
        torch.nn.init.normal_(table, std=0.5)  # zeros at init would hide the terms
    x = torch.randn(2, *size, 48)
    with torch.inference_mode():
        expected, fused = attn(x), _fused_attention(attn, x)
    assert fused.shape == expected.shape
    assert (fused - expected).abs().max().item() <= 1e-5


def test_fp32_sdpa_runs_the_fused_attention_and_fp32_restores_the_published_encoder(
    one_torch_thread: None,
) -> None:
    sam = build_tiny_sam(0)
    for block in sam.image_encoder.blocks:
        torch.nn.init.normal_(block.attn.rel_pos_h, std=0.5)
        torch.nn.init.normal_(block.attn.rel_pos_w, std=0.5)
    fp32, fused, again = _encoded(sam, "fp32-sdpa")
    assert all("forward" not in vars(b.attn) for b in sam.image_encoder.blocks)
    assert fused.dtype == torch.float32 and not torch.equal(fused, fp32)  # it really ran
    assert (fused - fp32).abs().max().item() <= 1e-5 * max(1.0, fp32.abs().max().item())
    assert torch.equal(again, fp32)


def test_precision_is_in_the_cache_key_only_when_reduced() -> None:
    image = np.zeros((4, 6, 3), np.uint8)
    common = {
        "sam_name": "sam-vit-h",
        "sam_sha256": "0" * 64,
        "channel_order": "bgr",
        "amg": {},
        "generator": "fast",
    }
    old = cache_key(image, **common)
    assert cache_key(image, **common, sam_precision="fp32") == old
    keys = {cache_key(image, **common, sam_precision=p) for p in ("fp32-sdpa", "bf16", "fp16")}
    assert len(keys) == 3 and old not in keys


def test_a_reduced_precision_is_a_departure_from_the_recipe() -> None:
    assert precision_departures("fp32", model="m") == []
    [note] = precision_departures("bf16", model="segnafnet-gopro")
    assert "bf16" in note and "fp32" in note and "segnafnet-gopro" in note


def test_the_generator_refuses_before_loading_sam(tmp_path: Path) -> None:
    register_tiny_sam()
    manifest = weights.load_manifest(write_tiny_sam_manifest(tmp_path / "models"))
    recipe = manifest.get("segnafnet-tiny").recipe
    assert recipe is not None
    with pytest.raises(UsageError, match="CUDA GPU only"):
        MaskGenerator("sam-tiny", recipe, manifest=manifest, device="cpu", sam_precision="fp16")


@pytest.mark.parametrize("command", ["masks", "deblur"])
def test_the_cli_refuses_bf16_on_the_cpu_with_one_line(
    command: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    register_tiny_sam()
    monkeypatch.setenv("SAM_DEBLUR_WEIGHTS", str(write_tiny_sam_manifest(tmp_path / "models")))
    monkeypatch.setenv("COLUMNS", "200")
    photo = tmp_path / "photo.png"
    from PIL import Image

    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(photo)
    argv = [str(photo), "-o", str(tmp_path / "out"), "--model", "segnafnet-tiny"]
    argv += ["--device", "cpu", "--sam-precision", "bf16"]
    code = main(["masks", *argv] if command == "masks" else argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "--sam-precision bf16 runs SAM on a CUDA GPU only" in " ".join(err.split())
    assert not (tmp_path / "out").exists()


def test_masks_with_fp32_sdpa_on_the_cpu_carry_the_note_and_agree_with_fp32(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image
    from skimage import data

    register_tiny_sam()
    monkeypatch.setenv("SAM_DEBLUR_WEIGHTS", str(write_tiny_sam_manifest(tmp_path / "models")))
    monkeypatch.setenv("COLUMNS", "200")
    weights.import_weights(
        weights.load_manifest().get("sam-tiny"), tmp_path / "models" / "sam_tiny.pth"
    )
    photo = tmp_path / "photo.png"
    Image.fromarray(data.astronaut()[::4, ::4]).save(photo)
    segmasks = {}
    for precision in ("fp32", "fp32-sdpa"):
        out = tmp_path / precision
        argv = ["masks", str(photo), "-o", str(out), "--model", "segnafnet-tiny", "--no-cache"]
        code = main([*argv, "--device", "cpu", "--format", "segmask", "--sam-precision", precision])
        err = " ".join(capsys.readouterr().err.split())
        assert code == 0, err
        assert ("SAM runs in fp32-sdpa" in err) == (precision == "fp32-sdpa")
        [png] = out.glob("*.png")
        segmasks[precision] = np.asarray(Image.open(png))
    assert len(np.unique(segmasks["fp32"])) > 2  # the tiny SAM finds several masks here
    assert np.mean(segmasks["fp32"] == segmasks["fp32-sdpa"]) >= 0.99
