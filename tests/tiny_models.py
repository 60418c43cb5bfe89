"""Tiny random-weight models of the real architectures behind a test manifest, for end-to-end runs.

The test manifest reuses the real entry names (``segnafnet-gopro``, ``masknafnet-gopro``,
``nafnet-gopro``, ``sam-vit-h``), so commands run with their defaults; only the shapes are
tiny: NAFNet width 8 with one block per level (still four levels, so the padding to a
multiple of 16 is the real one) and the tiny SAM of ``tiny_sam.py``. The recipe keeps BGR,
with a 2 x 2 point grid and thresholds at 0 so that a random SAM still yields masks.

Files reach the cache through ``weights.import_weights``, the code path of
``sam-deblur weights import``, never by writing into the cache directly.

The fixtures (``tiny_env`` builds on the other two) are registered for every test module by
``conftest.py`` (``pytest_plugins``); a test names them and imports only the types::

    from tiny_models import TinyEnv, TinyEnvFactory

    def test_x(tiny_env: TinyEnv) -> None: ...          # every model imported
    def test_y(tiny_env_factory: TinyEnvFactory) -> None:
        tiny_env_factory(imported=["nafnet-gopro"])      # only some
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tiny_sam import TINY_ARCH, register_tiny_sam, save_tiny_sam

from sam_deblur_cli.nets import NetConfig, build_network

# Manifest name -> network variant of the tiny deblur models.
DEBLUR_MODELS = {"segnafnet-gopro": "map", "masknafnet-gopro": "cat", "nafnet-gopro": "plain"}
SAM_NAME = "sam-vit-h"
ALL_MODELS = (*DEBLUR_MODELS, SAM_NAME)
TINY_NET: dict[str, Any] = {
    "width": 8,
    "enc_blk_nums": (1, 1, 1, 1),
    "middle_blk_num": 1,
    "dec_blk_nums": (1, 1, 1, 1),
}
TESTS_DIR = Path(__file__).resolve().parent


def tiny_net_config(variant: str) -> NetConfig:
    return NetConfig(variant=variant, **TINY_NET)  # type: ignore[arg-type]


def save_tiny_network(path: Path, variant: str, seed: int = 0) -> Path:
    """A tiny network of ``variant`` with seeded random weights, saved the BasicSR way."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_network(tiny_net_config(variant))
        with torch.no_grad():
            for name, param in net.named_parameters():
                if name.endswith(("beta", "gamma")):
                    # NAFNet zero-initialises the residual scales, which would make every block
                    # an identity; random ones make a wrongly loaded weight visible.
                    param.normal_(0.0, 0.1)
    torch.save({"params": net.state_dict()}, path)
    return path


def manifest_text() -> str:
    """weights.toml of the tiny models; every file is page-hosted, so it must be imported."""
    recipe = """schema = 1

[recipes.sam-deblur-gopro]
sam = "sam-vit-h"
channel_order = "bgr"

[recipes.sam-deblur-gopro.amg]
points_per_side = 2
pred_iou_thresh = 0.0
stability_score_thresh = 0.0

[models.sam-vit-h]
kind = "sam"
arch = "{arch}"
license = "Apache-2.0"
homepage = "https://example.invalid/tiny-sam"
source = {{ page = "https://example.invalid/tiny-sam", file = "sam-vit-h.pth" }}
"""
    parts = [recipe.format(arch=TINY_ARCH)]
    blocks = ", ".join(str(n) for n in TINY_NET["enc_blk_nums"])
    for name, variant in DEBLUR_MODELS.items():
        recipe_line = 'recipe = "sam-deblur-gopro"' if variant != "plain" else ""
        parts.append(f"""
[models.{name}]
kind = "deblur"
license = "Apache-2.0"
homepage = "https://example.invalid/tiny"
source = {{ page = "https://example.invalid/tiny", file = "{name}.pth" }}
tlc = true
{recipe_line}

[models.{name}.net]
variant = "{variant}"
width = {TINY_NET["width"]}
enc_blk_nums = [{blocks}]
middle_blk_num = 1
dec_blk_nums = [{blocks}]
""")
    return "".join(parts)


def build_checkpoints(folder: Path) -> dict[str, Path]:
    """One checkpoint file per manifest entry, in ``folder``; returns ``{name: path}``."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for seed, (name, variant) in enumerate(DEBLUR_MODELS.items()):
        files[name] = save_tiny_network(folder / f"{name}.pth", variant, seed)
    files[SAM_NAME] = folder / f"{SAM_NAME}.pth"
    save_tiny_sam(files[SAM_NAME], seed=0)
    return files


@dataclass
class TinyEnv:
    """A test manifest in ``root`` whose entries were imported into this test's cache."""

    root: Path
    manifest: Path
    checkpoints: dict[str, Path]
    imported: tuple[str, ...]

    def subprocess_env(self, *, tiny_sam: bool = True) -> dict[str, str]:
        """Environment for a child ``sam-deblur``: the same manifest and cache (conftest's
        ``SAM_DEBLUR_HOME``), no network and, with ``tiny_sam``, the tiny SAM architecture
        registered at start-up through a sitecustomize (which imports segment_anything)."""
        paths = [str(TESTS_DIR)]
        if tiny_sam:
            site = self.root / "site"
            site.mkdir(exist_ok=True)
            (site / "sitecustomize.py").write_text(
                "from tiny_sam import register_tiny_sam\nregister_tiny_sam()\n"
            )
            paths.insert(0, str(site))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env["SAM_DEBLUR_WEIGHTS"] = str(self.manifest)
        env["COLUMNS"] = "200"
        return env


def make_tiny_env(
    root: Path, checkpoints: dict[str, Path], imported: Iterable[str] = ALL_MODELS
) -> TinyEnv:
    """Write the manifest into ``root`` and import the ``imported`` entries into the cache
    (``SAM_DEBLUR_HOME``) with ``weights.import_weights``. Point ``SAM_DEBLUR_WEIGHTS`` at
    ``TinyEnv.manifest`` to use it (the fixtures do)."""
    from sam_deblur_cli import weights

    register_tiny_sam()
    root.mkdir(parents=True, exist_ok=True)
    manifest = root / "weights.toml"
    manifest.write_text(manifest_text())
    loaded = weights.load_manifest(manifest)
    names = tuple(imported)
    for name in names:
        weights.import_weights(loaded.get(name), checkpoints[name])
    return TinyEnv(root, manifest, checkpoints, names)


def console_script() -> Path:
    """The installed ``sam-deblur`` next to this interpreter."""
    script = Path(sys.executable).with_name("sam-deblur")
    assert script.exists(), f"{script} is missing; run `pip install -e .`"
    return script


# Fixtures carry their names in ``name=`` (pytest's advice for fixtures in an importable
# module): the functions never collide with the test parameters that receive their values.
@pytest.fixture(scope="session", name="tiny_checkpoints")
def tiny_checkpoints_fixture(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny checkpoint files, built once per session (read-only for tests)."""
    return build_checkpoints(tmp_path_factory.mktemp("tiny-checkpoints"))


TinyEnvFactory = Callable[..., TinyEnv]


@pytest.fixture(name="tiny_env_factory")
def tiny_env_factory_fixture(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_checkpoints: dict[str, Path]
) -> TinyEnvFactory:
    """``factory(imported=names)``: the test manifest in force with only ``names`` imported."""

    def factory(imported: Iterable[str] = ALL_MODELS) -> TinyEnv:
        env = make_tiny_env(tmp_path / "tiny", tiny_checkpoints, imported)
        monkeypatch.setenv("SAM_DEBLUR_WEIGHTS", str(env.manifest))
        return env

    return factory


@pytest.fixture(name="tiny_env")
def tiny_env_fixture(tiny_env_factory: TinyEnvFactory) -> TinyEnv:
    """Every tiny model imported into this test's cache, the test manifest in force."""
    return tiny_env_factory()


# --------------------------------------------------------------------------- test photos


def small_photo(name: str = "astronaut", step: int = 8) -> np.ndarray:
    """A real photo from scikit-image, subsampled: H x W x 3 uint8 RGB (astronaut: 64 x 64)."""
    from skimage import data

    return np.ascontiguousarray(getattr(data, name)()[::step, ::step, :3])


def srgb_icc() -> bytes:
    """An sRGB ICC profile (lcms-built), to check that profiles survive."""
    from PIL import ImageCms

    return bytes(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())


def write_special_photos(folder: Path) -> dict[str, Path]:
    """Photos that stress imageio through the pipeline; returns ``{kind: path}``.

    Kinds: exif_rotated (JPEG stored 48 wide, 64 tall, orientation 6: shown 64 x 48; with an
    ICC profile), png16 (RGB, 16 bits), rgba (PNG with a gradient alpha), cmyk (JPEG),
    gray (8-bit grayscale PNG).
    """
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rgb = small_photo("coffee", 8)[:48, :64]  # 48 x 64
    paths = {kind: folder / name for kind, name in _SPECIAL_NAMES.items()}
    stored = Image.fromarray(
        np.ascontiguousarray(np.rot90(rgb, 1))
    )  # 64 x 48; orientation 6 undoes it
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(paths["exif_rotated"], quality=95, exif=exif.tobytes(), icc_profile=srgb_icc())
    _write_png16(paths["png16"], rgb.astype(np.uint16) * 257 + 3)
    alpha = np.tile(np.linspace(0, 255, rgb.shape[1]).astype(np.uint8), (rgb.shape[0], 1))
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(paths["rgba"])
    Image.fromarray(rgb).convert("CMYK").save(paths["cmyk"], quality=95)
    Image.fromarray(rgb).convert("L").save(paths["gray"])
    return paths


_SPECIAL_NAMES = {
    "exif_rotated": "rotated.jpg",
    "png16": "deep.png",
    "rgba": "alpha.png",
    "cmyk": "print.jpg",
    "gray": "gray.png",
}


def _write_png16(path: Path, rgb16: np.ndarray) -> None:
    import cv2

    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb16[:, :, ::-1]))  # OpenCV wants BGR


def file_hashes(paths: Iterable[Path]) -> dict[Path, str]:
    """sha256 of every file among ``paths`` (folders and missing paths are left out)."""
    import hashlib

    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths if p.is_file()}


def tree_hashes(folder: Path) -> dict[Path, str]:
    """sha256 of every file under ``folder``."""
    return file_hashes(sorted(folder.rglob("*")))


def save_photo(path: Path, name: str = "astronaut") -> Path:
    """A small real photo written to ``path`` (format from the suffix); returns ``path``."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(small_photo(name)).save(path)
    return path


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    """``sam-deblur ARGV`` in-process: (exit code, stdout, stderr)."""
    from sam_deblur_cli.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err
