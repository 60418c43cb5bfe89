"""pipeline.py: settings, array conversions, and the pipeline run end to end."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from tiny_models import (
    TinyEnv,
    small_photo,
)

from sam_deblur_cli.amg import RecipeOverrides
from sam_deblur_cli.batch.local import run_batch
from sam_deblur_cli.batch.plan import plan_batch
from sam_deblur_cli.errors import InputError, UsageError
from sam_deblur_cli.pipeline import (
    Deblurrer,
    DeblurSettings,
    as_float_rgb,
    as_uint8_rgb,
    normalize_tile,
)

# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("value", "expected"), [("auto", "auto"), (None, None), (0, None), ("0", None), ("512", 512)]
)
def test_normalize_tile(value: object, expected: object) -> None:
    assert normalize_tile(value) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["big", "-5"])
def test_bad_tile_is_a_usage_error(bad: str) -> None:
    with pytest.raises(UsageError):
        normalize_tile(bad)


# --------------------------------------------------------------------------- arrays


def test_array_conversions_round_trip_uint8() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    as_float = as_float_rgb(rgb)
    assert as_float.dtype == np.float32 and as_float.max() <= 1.0
    np.testing.assert_array_equal(as_uint8_rgb(as_float), rgb)
    clipped = as_float_rgb(np.array([[[-0.5, 0.5, 2.0]]], dtype=np.float64))
    np.testing.assert_array_equal(clipped, np.array([[[0.0, 0.5, 1.0]]], dtype=np.float32))


@pytest.mark.parametrize("shape", [(4, 4), (4, 4, 4), (0, 4, 3)])
def test_arrays_that_are_not_rgb_are_refused(shape: tuple[int, ...]) -> None:
    with pytest.raises(InputError, match="H x W x 3"):
        as_float_rgb(np.zeros(shape, dtype=np.uint8))
    with pytest.raises(InputError, match="uint8 or float"):
        as_float_rgb(np.zeros((2, 2, 3), dtype=np.int32))


# --------------------------------------------------------------------------- runs


def test_batch_loads_the_model_once_and_decodes_the_next_image_meanwhile(
    tiny_env: TinyEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image

    from sam_deblur_cli import imageio, nets

    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(small_photo("astronaut", 16)).save(_mkdir(tmp_path / "in") / name)
    builds: list[str] = []
    real_build = nets.build_network
    monkeypatch.setattr(
        nets, "build_network", lambda cfg: builds.append(cfg.variant) or real_build(cfg)
    )
    readers: dict[str, str] = {}
    decoded = {name: threading.Event() for name in ("a.png", "b.png", "c.png")}
    real_read = imageio.read_image

    def read(path: Path, **kwargs: object) -> object:
        readers[Path(path).name] = threading.current_thread().name
        picture = real_read(path, **kwargs)  # type: ignore[arg-type]
        decoded[Path(path).name].set()
        return picture

    monkeypatch.setattr(imageio, "read_image", read)
    deblurrer = Deblurrer(
        DeblurSettings(recipe=RecipeOverrides(model="nafnet-gopro"), device="cpu")
    )
    real_deblur = deblurrer.deblur
    overlapped: list[bool] = []

    def deblur(rgb: np.ndarray, masks: object = None) -> np.ndarray:
        # While image n is deblurred, image n + 1 is decoded: wait for it here (without the
        # prefetch it would only start after this returns, and the wait would time out).
        following = list(decoded.values())[len(overlapped) + 1 :]
        overlapped.append(not following or following[0].wait(timeout=30))
        return real_deblur(rgb, masks)  # type: ignore[arg-type]

    monkeypatch.setattr(deblurrer, "deblur", deblur)
    jobs = plan_batch(tmp_path / "in", tmp_path / "out")
    records = run_batch(deblurrer, jobs)
    assert [r["status"] for r in records] == ["ok", "ok", "ok"]
    assert builds == ["plain"]
    assert set(readers) == {"a.png", "b.png", "c.png"}
    assert all(name.startswith("batch") for name in readers.values())
    assert overlapped == [True, True, True]


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_models_with_one_mask_recipe_share_one_sam_and_get_the_same_masks(
    tiny_env: TinyEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sam_deblur_cli import masks

    built: list[str] = []
    real = masks.MaskGenerator

    class Counted(real):  # type: ignore[misc,valid-type]
        def __init__(self, *args: object, **kwargs: object) -> None:
            built.append(str(args[0]))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(masks, "MaskGenerator", Counted)
    first = Deblurrer(DeblurSettings(recipe=RecipeOverrides(model="segnafnet-gopro"), device="cpu"))
    cat = Deblurrer(
        DeblurSettings(recipe=RecipeOverrides(model="masknafnet-gopro"), device="cpu"),
        share_sam_with=[first],
    )
    assert built == ["sam-vit-h"]  # one SAM for both
    photo = small_photo()
    np.testing.assert_array_equal(
        cat.compute_masks(photo).segmask, first.compute_masks(photo).segmask
    )
    # Another recipe (here: other AMG settings) or no masks at all: nothing to share.
    other = DeblurSettings(
        recipe=RecipeOverrides(model="masknafnet-gopro", amg={"points_per_side": 3}), device="cpu"
    )
    Deblurrer(other, share_sam_with=[first])
    plain = Deblurrer(
        DeblurSettings(recipe=RecipeOverrides(model="nafnet-gopro"), device="cpu"),
        share_sam_with=[first],
    )
    assert built == ["sam-vit-h", "sam-vit-h"] and not plain.needs_masks
