"""Our whole test-time path against upstream's, as docs/fidelity.md lists it.

An upstream-format SegNAFNet checkpoint goes in through `sam-deblur weights import` and a
photo with its segmask PNG through `sam-deblur PHOTO --masks SEGMASK`; the reference is
the spec-written upstream pipeline (tests/oracles.py): cv2 decode (BGR -> RGB, / 255),
one group per gray value of the segmask, the group slices fed at bool / 255, upstream's
SegNAFNet, clamp and round to uint8.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import oracles
import pytest
import torch
from tiny_models import TinyEnvFactory, run_cli, small_photo, tiny_net_config

from sam_deblur_cli.masks.encode import encode_segmask
from sam_deblur_cli.nets import build_network

# Not a multiple of 16 (the padding is in play) and wider than the level-0 TLC window.
HEIGHT, WIDTH = 60, 410


def _checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A tiny MAP network whose every branch matters, saved as upstream saves (``params``)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        net = build_network(tiny_net_config("map"))
        with torch.no_grad():
            for name, param in net.named_parameters():
                if name.endswith(("beta", "gamma")):
                    param.normal_(0.0, 0.3)
            # region features that differ clearly, so the mask value shows in the output
            net.pre_seg.weight.mul_(30)
    state = net.state_dict()
    torch.save({"params": state}, path)
    return state


def _photo_and_segmask(folder: Path) -> tuple[Path, Path]:
    """A real photo strip and a segmask of four overlapping regions, as PNG files."""
    rgb = small_photo("astronaut", 1)[100 : 100 + HEIGHT, 40 : 40 + WIDTH]
    gray = rgb.mean(axis=2)
    box = np.zeros(gray.shape, dtype=bool)
    box[10:50, 100:300] = True
    masks = [gray > 90, gray > 170, box, gray < 40]  # SAM's order: overlaps make new values
    segmask = encode_segmask(masks, gray.shape)
    photo, mask = folder / "photo.png", folder / "photo_mask.png"
    cv2.imwrite(str(photo), rgb[..., ::-1].copy())
    cv2.imwrite(str(mask), segmask)
    return photo, mask


def _upstream_output(
    state: dict[str, torch.Tensor], photo: Path, mask: Path, tlc: bool, mask_scale: float = 255.0
) -> np.ndarray:
    """upstream.md: cv2.imread, BGR -> RGB float / 255, groups by gray value, uint8 out."""
    bgr = cv2.imread(str(photo), cv2.IMREAD_COLOR)
    image = torch.from_numpy(bgr[..., ::-1].astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    segmask = cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE)
    values = np.unique(segmask)  # one group per gray value, 0 included (section 5.4)
    labels = torch.from_numpy(np.searchsorted(values, segmask).astype(np.int64))[None]
    with torch.inference_mode():
        out = oracles.forward(state, "map", image, labels, tlc, mask_scale)
    return (out[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)


@pytest.mark.parametrize("tlc", [False, True], ids=["global", "tlc"])
def test_imported_map_checkpoint_through_the_cli_matches_upstreams_path(
    tiny_env_factory: TinyEnvFactory,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    tlc: bool,
) -> None:
    tiny_env_factory(imported=[])
    state = _checkpoint(tmp_path / "SegNAFNet-GoPro.pth")
    checkpoint = tmp_path / "SegNAFNet-GoPro.pth"
    code, _, err = run_cli(capsys, "weights", "import", "segnafnet-gopro", checkpoint)
    assert code == 0, err
    photo, mask = _photo_and_segmask(tmp_path)
    out_path = tmp_path / "out.png"
    flag = "--tlc" if tlc else "--no-tlc"
    code, _, err = run_cli(capsys, photo, "--masks", mask, "-o", out_path, flag, "--device", "cpu")
    assert code == 0, err

    ours = cv2.imread(str(out_path), cv2.IMREAD_COLOR)[..., ::-1].astype(int)
    upstream = _upstream_output(state, photo, mask, tlc).astype(int)
    assert ours.shape == upstream.shape == (HEIGHT, WIDTH, 3)
    assert np.abs(ours - upstream).max() <= 1
    assert (ours == upstream).mean() >= 0.999
    # The comparison can fail: the same network fed value-1 masks is far from it.
    value_one = _upstream_output(state, photo, mask, tlc, mask_scale=1.0).astype(int)
    assert np.abs(value_one - upstream).max() > 4
    assert (value_one != upstream).mean() > 0.05
