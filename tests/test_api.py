"""The Python API: ``from sam_deblur_cli import Deblurrer, DeblurSettings, deblur_array, ...``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_models import (
    TinyEnv,
    small_photo,
)

import sam_deblur_cli
from sam_deblur_cli import (
    Deblurrer,
    DeblurSettings,
    MaskError,
    RecipeOverrides,
    deblur_array,
    deblur_file,
)

PLAIN = DeblurSettings(recipe=RecipeOverrides(model="nafnet-gopro"), device="cpu")


def _segmask_png(path: Path, shape: tuple[int, int]) -> Path:
    from sam_deblur_cli.masks.formats import write_segmask_png

    segmask = np.zeros(shape, dtype=np.uint8)
    segmask[: shape[0] // 2] = 4
    return write_segmask_png(path, segmask)


@pytest.mark.subprocess
def test_import_is_lazy_and_names_resolve() -> None:
    code = (
        "import sys, sam_deblur_cli as s\n"
        "assert 'torch' not in sys.modules and 'numpy' not in sys.modules\n"
        "from sam_deblur_cli import Deblurrer, DeblurSettings, deblur_file, deblur_array\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert {'Deblurrer', 'deblur_array', 'MaskResult'} <= set(dir(s))\n"
        "print(s.__version__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == sam_deblur_cli.__version__
    with pytest.raises(AttributeError, match="no_such_name"):
        sam_deblur_cli.no_such_name  # noqa: B018


def _thp_available() -> bool:
    try:
        return "[never]" not in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False


@pytest.mark.subprocess
@pytest.mark.skipif(
    sys.platform != "linux" or not _thp_available(), reason="needs Linux transparent huge pages"
)
@pytest.mark.parametrize("preset", [None, "0"])
def test_import_before_torch_puts_large_tensors_on_their_own_pages(preset: str | None) -> None:
    """With THP advice on, torch page-aligns large CPU tensors (and madvises them); it is on
    when sam_deblur_cli came first, unless the user set THP_MEM_ALLOC_ENABLE themselves."""
    code = (
        "import os, sam_deblur_cli, torch\n"
        "print(os.environ.get('THP_MEM_ALLOC_ENABLE'))\n"
        "ts = [torch.empty(8 << 20 | k) for k in range(1, 5)]\n"
        "print(sum(t.data_ptr() % 4096 == 0 for t in ts))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    if preset is not None:
        env["THP_MEM_ALLOC_ENABLE"] = preset
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, env=env
    )
    assert out.returncode == 0, out.stderr
    setting, aligned = out.stdout.split()
    if preset is None:
        assert (setting, aligned) == ("1", "4")
    else:
        assert setting == "0" and int(aligned) < 4


def test_arrays_and_files_go_through_the_same_pipeline(tiny_env: TinyEnv, tmp_path: Path) -> None:
    rgb = small_photo("chelsea", 6)  # 50 x 76
    src = tmp_path / "cat.png"
    Image.fromarray(rgb).save(src)
    masks_png = _segmask_png(tmp_path / "mask.png", rgb.shape[:2])
    settings = DeblurSettings(device="cpu", tlc=False)  # the default model (MAP), masks from a file
    from sam_deblur_cli.masks import load_mask_file

    masks = load_mask_file(masks_png, rgb.shape[:2])
    as_uint8 = deblur_array(rgb, settings, masks=masks)
    as_float = deblur_array(rgb.astype(np.float32) / 255, settings, masks=masks)
    assert as_uint8.dtype == np.uint8 and as_uint8.shape == rgb.shape
    assert as_float.dtype == np.float32 and 0.0 <= as_float.min() <= as_float.max() <= 1.0
    np.testing.assert_array_equal(np.round(as_float * 255).astype(np.uint8), as_uint8)
    assert not np.array_equal(as_uint8, rgb)  # the network did something

    record = deblur_file(src, settings=settings, masks_file=masks_png)
    assert record["status"] == "ok" and record["output"] == str(tmp_path / "cat_deblurred.png")
    np.testing.assert_array_equal(np.asarray(Image.open(record["output"])), as_uint8)


def test_deblurrer_makes_sam_masks_once_and_checks_their_size(tiny_env: TinyEnv) -> None:
    rgb = small_photo("astronaut", 16)  # 32 x 32
    deblurrer = Deblurrer(DeblurSettings(recipe=RecipeOverrides(fast_masks=False), device="cpu"))
    assert deblurrer.needs_masks and deblurrer.guide_kind == "labels" and deblurrer.tlc
    masks = deblurrer.compute_masks(rgb)
    assert masks.count > 0 and masks.labels.shape == (32, 32)
    np.testing.assert_array_equal(deblurrer.deblur(rgb), deblurrer.deblur(rgb, masks))
    with pytest.raises(MaskError, match="made from this image"):
        deblurrer.deblur(small_photo("astronaut", 8), masks)


def test_overrides_are_departures_and_change_the_recipe_key(tiny_env: TinyEnv) -> None:
    stock = Deblurrer(DeblurSettings(device="cpu", tlc=False), load_sam=False)
    assert stock.departures() == [] and stock.tlc is False
    changed = Deblurrer(
        DeblurSettings(
            recipe=RecipeOverrides(amg={"points_per_side": 8}, channel_order="rgb"), device="cpu"
        ),
        load_sam=False,
    )
    notes = " ".join(changed.departures())
    assert "points_per_side" in notes and "RGB" in notes
    assert changed.recipe_key != stock.recipe_key
    assert Deblurrer(PLAIN).departures() == []


@pytest.mark.subprocess
def test_runs_that_need_no_sam_never_import_segment_anything(
    tiny_env: TinyEnv, tmp_path: Path
) -> None:
    rgb = small_photo("astronaut", 8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    masks_png = _segmask_png(tmp_path / "m.png", rgb.shape[:2])
    code = (
        "import sys\n"
        "import numpy as np\n"
        "from sam_deblur_cli import Deblurrer, DeblurSettings, RecipeOverrides, deblur_array\n"
        "plain = DeblurSettings(recipe=RecipeOverrides(model='nafnet-gopro'), tlc=False)\n"
        "out = deblur_array(np.zeros((20, 30, 3), np.uint8), plain)\n"
        "assert out.shape == (20, 30, 3) and out.dtype == np.uint8\n"
        "d = Deblurrer(DeblurSettings(tlc=False), load_sam=False)\n"
        f"r = d.deblur_file({str(tmp_path / 'a.png')!r}, {str(tmp_path / 'b.png')!r}, "
        f"masks_file={str(masks_png)!r})\n"
        "assert r['status'] == 'ok', r\n"
        "assert 'segment_anything' not in sys.modules, 'segment_anything imported'\n"
    )
    env = tiny_env.subprocess_env(tiny_sam=False)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "b.png").is_file()


def test_deblur_file_output_rules(tiny_env: TinyEnv, tmp_path: Path) -> None:
    from sam_deblur_cli import FileOptions, UsageError

    src = tmp_path / "a.jpg"
    Image.fromarray(small_photo()).save(src)
    plain = DeblurSettings(recipe=RecipeOverrides(model="nafnet-gopro"), device="cpu", tlc=False)
    record = deblur_file(src, settings=plain, options=FileOptions(format="png"))
    assert record["output"] == str(tmp_path / "a_deblurred.png")
    assert Image.open(record["output"]).format == "PNG"
    deblurrer = Deblurrer(plain)
    with pytest.raises(UsageError, match="is the input itself"):
        deblurrer.deblur_file(src, tmp_path / "." / "a.jpg", options=FileOptions(overwrite=True))
    with pytest.raises(UsageError, match="is a folder"):
        deblurrer.deblur_file(src, tmp_path)
    skipped = deblurrer.deblur_file(src, record["output"])
    assert skipped["status"] == "skipped"
