"""SAM's image encoder in other arithmetic (``--sam-precision``), opt-in.

``fp32`` (the default) is SAM as published, and the deblurring checkpoints learned on masks
SAM made in fp32. ``fp32-sdpa`` keeps float32 but runs each encoder block's attention through
torch's fused ``scaled_dot_product_attention`` with the decomposed relative-position terms as
its additive mask (the same sum, rounded in another order: the embedding agrees with fp32's
to about 1e-6 relative; on any device). ``bf16`` and ``fp16`` run the image encoder, nearly
all of SAM's arithmetic, under ``torch.autocast`` and cast its embedding back to float32.
The prompt encoder, the mask decoder and every threshold after the encoder run as before.
The masks may differ from fp32's, so the choice is part of the mask cache key and of the
notes a run prints. Reduced precision is offered on CUDA devices only: CPUs without bf16
units emulate it (slower than fp32), and its agreement with fp32 is measured on a GPU.

torch is imported inside the functions.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

from sam_deblur_cli.errors import UsageError

if TYPE_CHECKING:
    import torch
    from segment_anything.modeling import Sam

SAM_PRECISIONS = ("fp32", "fp32-sdpa", "bf16", "fp16")
REDUCED = ("bf16", "fp16")  # CUDA only


def check_sam_precision(precision: str, device: str) -> None:
    """Raise ``UsageError`` unless SAM can run in ``precision`` on ``device`` (a torch
    device string such as ``"cpu"`` or ``"cuda:0"``)."""
    if precision not in SAM_PRECISIONS:
        raise UsageError(
            f"Unknown SAM precision {precision!r}; use one of {', '.join(SAM_PRECISIONS)}."
        )
    if precision in REDUCED and not device.startswith("cuda"):
        raise UsageError(
            f"--sam-precision {precision} runs SAM on a CUDA GPU only, and this run uses "
            f"{device}; drop the option (SAM runs in fp32 there)."
        )


def apply_sam_precision(sam: Sam, precision: str) -> None:
    """Run ``sam``'s image encoder in ``precision`` from now on (in place; ``"fp32"``
    restores the published encoder). Its output stays B x 256 x 64 x 64 float32."""
    import torch

    encoder = sam.image_encoder
    encoder.__dict__.pop("forward", None)  # back to the class's forwards
    for block in encoder.blocks:
        block.attn.__dict__.pop("forward", None)
    if precision == "fp32":
        return
    if precision == "fp32-sdpa":
        for block in encoder.blocks:  # an instance attribute shadows the class's forward
            block.attn.__dict__["forward"] = partial(_fused_attention, block.attn)
        return
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    published = encoder.forward

    def forward(x: torch.Tensor) -> Any:
        with torch.autocast(device_type=x.device.type, dtype=dtype):
            embedding = published(x)
        return embedding.float()

    encoder.__dict__["forward"] = forward  # an instance attribute shadows the class's


def _fused_attention(attn: Any, x: torch.Tensor) -> torch.Tensor:
    """segment_anything's ``Attention.forward`` (B x H x W x C in and out) with the softmax,
    the relative-position terms and the product with v in one fused call."""
    import torch
    import torch.nn.functional as F
    from segment_anything.modeling.image_encoder import get_rel_pos

    b, h, w, _ = x.shape
    qkv = attn.qkv(x).reshape(b, h * w, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.reshape(3, b * attn.num_heads, h * w, -1).unbind(0)
    bias = None
    if attn.use_rel_pos:  # add_decomposed_rel_pos's two terms, as one additive mask
        r_q = q.reshape(b * attn.num_heads, h, w, -1)
        rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, get_rel_pos(h, h, attn.rel_pos_h))
        rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, get_rel_pos(w, w, attn.rel_pos_w))
        bias = (rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]).reshape(q.shape[0], h * w, -1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=attn.scale)
    out = out.view(b, attn.num_heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
    return attn.proj(out)


def precision_departures(precision: str, *, model: str) -> list[str]:
    """The sentence naming a SAM arithmetic other than fp32 as a departure from ``model``'s
    recipe."""
    if precision == "fp32":
        return []
    return [f"SAM runs in {precision}, but {model} was trained on masks SAM made in fp32."]
