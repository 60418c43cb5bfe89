"""SAM's image encoder in reduced precision (``--sam-precision``), opt-in.

``fp32`` (the default) is SAM as published, and the deblurring checkpoints learned on masks
SAM made in fp32. ``bf16`` and ``fp16`` run the image encoder, nearly all of SAM's
arithmetic, under ``torch.autocast`` and cast its embedding back to float32: the prompt
encoder, the mask decoder and every threshold after it run in fp32 as before. The masks
may differ from fp32's, so the precision is part of the mask cache key and of the notes a
run prints. Reduced precision is offered on CUDA devices only: CPUs without bf16 units
emulate it (slower than fp32), and its agreement with fp32 is measured on a GPU.

torch is imported inside the functions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sam_deblur_cli.errors import UsageError

if TYPE_CHECKING:
    from segment_anything.modeling import Sam

SAM_PRECISIONS = ("fp32", "bf16", "fp16")


def check_sam_precision(precision: str, device: str) -> None:
    """Raise ``UsageError`` unless SAM can run in ``precision`` on ``device`` (a torch
    device string such as ``"cpu"`` or ``"cuda:0"``)."""
    if precision not in SAM_PRECISIONS:
        raise UsageError(
            f"Unknown SAM precision {precision!r}; use one of {', '.join(SAM_PRECISIONS)}."
        )
    if precision != "fp32" and not device.startswith("cuda"):
        raise UsageError(
            f"--sam-precision {precision} runs SAM on a CUDA GPU only, and this run uses "
            f"{device}; drop the option (SAM runs in fp32 there)."
        )


def apply_sam_precision(sam: Sam, precision: str) -> None:
    """Run ``sam``'s image encoder in ``precision`` from now on (in place; ``"fp32"``
    restores the published encoder). Its output stays B x 256 x 64 x 64 float32."""
    import torch

    encoder = sam.image_encoder
    encoder.__dict__.pop("forward", None)  # back to the class's forward
    if precision == "fp32":
        return
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    published = encoder.forward

    def forward(x: torch.Tensor) -> Any:
        with torch.autocast(device_type=x.device.type, dtype=dtype):
            embedding = published(x)
        return embedding.float()

    encoder.__dict__["forward"] = forward  # an instance attribute shadows the class's


def precision_departures(precision: str, *, model: str) -> list[str]:
    """The sentence naming a reduced SAM precision as a departure from ``model``'s recipe."""
    if precision == "fp32":
        return []
    return [f"SAM runs in {precision}, but {model} was trained on masks SAM made in fp32."]
