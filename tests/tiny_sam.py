"""A tiny random-weight SAM of the real segment_anything architecture, for tests.

Same classes as ``segment_anything.build_sam`` (ImageEncoderViT with windowed and global
attention, PromptEncoder, MaskDecoder with a TwoWayTransformer), same 1024 input size and
16-pixel patches (so a 64 x 64 image embedding and 256 x 256 low-res masks, as the real
ones), only narrow and shallow: builds in milliseconds, encodes an image in well under a
second on a CPU.

Use:
    sam = build_tiny_sam(seed=0)                 # a Sam in eval mode, random weights
    sha = save_tiny_sam(path, seed=0)            # bare state dict, like SAM's own .pth files
    arch = register_tiny_sam()                   # sam_model_registry[arch](checkpoint=None)
                                                 # builds the same architecture, weightless
    monkeypatch.setitem(sam_model_registry, "vit_b", tiny_sam_builder)  # behind a manifest
"""

from __future__ import annotations

import hashlib
from functools import partial
from pathlib import Path

import torch
from segment_anything import sam_model_registry
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)

TINY_ARCH = "vit_tiny_test"

IMAGE_SIZE = 1024
PATCH = 16
EMBED_DIM = 32  # ViT width (vit_b: 768)
PROMPT_DIM = 32  # prompt / decoder width (real SAM: 256)


def _architecture(image_size: int = IMAGE_SIZE) -> Sam:
    grid = image_size // PATCH
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=image_size,
            patch_size=PATCH,
            embed_dim=EMBED_DIM,
            depth=2,
            num_heads=2,
            mlp_ratio=2.0,
            out_chans=PROMPT_DIM,
            qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=14,
            global_attn_indexes=(),  # windowed only: a global block costs 0.5 s here
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=PROMPT_DIM,
            image_embedding_size=(grid, grid),
            input_image_size=(image_size, image_size),
            mask_in_chans=4,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=2, embedding_dim=PROMPT_DIM, mlp_dim=64, num_heads=2
            ),
            transformer_dim=PROMPT_DIM,
            iou_head_depth=3,
            iou_head_hidden_dim=32,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def build_tiny_sam(seed: int = 0, *, image_size: int = IMAGE_SIZE) -> Sam:
    """A tiny SAM with seeded random weights, in eval mode on the CPU.

    Parameters that segment_anything initialises to zero or one (absolute and relative
    position embeddings, LayerNorm affines) get small random values too, so every part of
    the network shapes the output and a wrongly loaded weight shows.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = _architecture(image_size)
        with torch.no_grad():
            for name, param in sam.named_parameters():
                if "pos" in name or "norm" in name:
                    param.add_(torch.randn_like(param) * 0.1)
            for layer in sam.mask_decoder.output_upscaling:
                if isinstance(layer, torch.nn.ConvTranspose2d):
                    # One kernel tap for all four sub-pixels: random taps paint a 4 x 4
                    # checkerboard over every mask; shared taps leave image-shaped blobs.
                    layer.weight.copy_(layer.weight[:, :, :1, :1].expand_as(layer.weight))
    return sam.eval()


def save_tiny_sam(path: str | Path, seed: int = 0) -> str:
    """Save ``build_tiny_sam(seed)``'s state dict with torch.save; returns its sha256 (hex)."""
    path = Path(path)
    torch.save(build_tiny_sam(seed).state_dict(), path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tiny_sam_builder(checkpoint: str | None = None) -> Sam:
    """A ``sam_model_registry`` builder for the tiny architecture (weights left at init)."""
    if checkpoint is not None:
        raise ValueError("load tiny SAM weights with our safe loader, not the builder")
    return _architecture().eval()


def register_tiny_sam(arch: str = TINY_ARCH) -> str:
    """Make ``sam_model_registry[arch]`` build the tiny architecture; returns ``arch``.

    The default adds a new key and leaves the real architectures alone. A manifest only
    accepts real arch names, so tests that go through one swap a real key for the run
    instead: ``monkeypatch.setitem(sam_model_registry, "vit_b", tiny_sam_builder)``.
    """
    sam_model_registry[arch] = tiny_sam_builder
    return arch


def write_tiny_sam_manifest(
    folder: str | Path,
    *,
    seed: int = 0,
    channel_order: str = "bgr",
    points_per_side: int = 4,
) -> Path:
    """A tiny SAM checkpoint plus a ``weights.toml`` naming it, in ``folder``.

    Entries: ``sam-tiny`` (arch ``TINY_ARCH``, call :func:`register_tiny_sam` first; its
    file ``sam_tiny.pth`` must still be imported, e.g. with ``weights.import_weights``) and
    ``segnafnet-tiny``, a small MAP network whose recipe ``tiny`` asks for ``sam-tiny`` with
    thresholds at 0, so that a random SAM still yields masks; ``nafnet-tiny``, a plain
    network (no masks). Only the SAM file is written. Returns the manifest's path.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sha = save_tiny_sam(folder / "sam_tiny.pth", seed)
    manifest = folder / "weights.toml"
    manifest.write_text(
        f"""
[recipes.tiny]
sam = "sam-tiny"
channel_order = "{channel_order}"

[recipes.tiny.amg]
points_per_side = {points_per_side}
pred_iou_thresh = 0.0
stability_score_thresh = 0.0

[models.sam-tiny]
kind = "sam"
arch = "{TINY_ARCH}"
license = "Apache-2.0"
homepage = "https://example.invalid/tiny-sam"
sha256 = "{sha}"
source = {{ page = "https://example.invalid/tiny-sam", file = "sam_tiny.pth" }}

[models.segnafnet-tiny]
kind = "deblur"
license = "Apache-2.0"
homepage = "https://example.invalid/tiny"
source = {{ page = "https://example.invalid/tiny", file = "segnafnet_tiny.pth" }}
recipe = "tiny"

[models.segnafnet-tiny.net]
variant = "map"
width = 8
enc_blk_nums = [1, 1]
middle_blk_num = 1
dec_blk_nums = [1, 1]
seg_channel = 2

[models.nafnet-tiny]
kind = "deblur"
license = "Apache-2.0"
homepage = "https://example.invalid/tiny"
source = {{ page = "https://example.invalid/tiny", file = "nafnet_tiny.pth" }}
net = {{ variant = "plain", width = 8 }}
"""
    )
    return manifest
