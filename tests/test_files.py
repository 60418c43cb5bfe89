"""files.py, the one atomic writer, and the modes of every file the commands write."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import numpy as np
import pytest
from PIL import Image
from tiny_models import SAM_NAME, TinyEnvFactory, run_cli, save_photo

from sam_deblur_cli.files import (
    atomic_file,
    atomic_folder,
    atomic_text_file,
    write_bytes,
    write_text,
)

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture
def umask() -> Iterator[Callable[[int], None]]:
    """``umask(0o022)`` sets the process umask for this test; the old one comes back after."""
    original = os.umask(0o022)
    os.umask(original)
    yield os.umask
    os.umask(original)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --------------------------------------------------------------------------- the writer


def test_a_failed_write_leaves_neither_target_nor_temp_file(tmp_path: Path) -> None:
    def broken(handle: IO[bytes]) -> None:
        handle.write(b"half")
        raise RuntimeError("disk vanished")

    (tmp_path / "keep.png").write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_file(tmp_path / "keep.png") as handle:
        broken(handle)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.png"]
    assert (tmp_path / "keep.png").read_bytes() == b"old"


@pytest.mark.parametrize("text", [False, True])
def test_ctrl_c_mid_write_keeps_the_old_file_and_no_temp_file(tmp_path: Path, text: bool) -> None:
    target = tmp_path / "report.json"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        if text:
            with atomic_text_file(target) as handle:
                handle.write("x" * 100_000)  # more than a buffer: part is on disk
                raise KeyboardInterrupt
        else:
            with atomic_file(target) as raw:
                raw.write(b"x" * 100_000)
                raise KeyboardInterrupt
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
    assert target.read_text() == "old"


def test_the_temp_file_is_hidden_beside_the_target_and_keeps_its_suffix(tmp_path: Path) -> None:
    target = tmp_path / "weights.safetensors"
    with atomic_file(target) as handle:
        temporary = Path(handle.name)
        handle.write(b"new")
        handle.flush()
        assert temporary.parent == tmp_path and temporary.name.startswith(".weights.")
        assert temporary.suffix == ".safetensors" and temporary.read_bytes() == b"new"
        assert not target.exists()  # nothing visible before the block ends
    assert target.read_bytes() == b"new" and not temporary.exists()


def test_text_and_bytes_helpers_replace_the_file(tmp_path: Path) -> None:
    target = tmp_path / "a.csv"
    assert write_text(target, "é,1\r\n2\n") == target
    assert target.read_bytes() == "é,1\r\n2\n".encode()  # no newline translation
    write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    with atomic_text_file(target, newline="") as handle:
        handle.write("a\nb")
    assert target.read_bytes() == b"a\nb"
    assert [p.name for p in tmp_path.iterdir()] == ["a.csv"]


def test_a_missing_folder_raises_oserror_and_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError), atomic_file(tmp_path / "no" / "x.png"):
        pass
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("mask", "file_mode", "folder_mode"), [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)]
)
def test_new_files_and_folders_follow_the_umask(
    tmp_path: Path, umask: Callable[[int], None], mask: int, file_mode: int, folder_mode: int
) -> None:
    umask(mask)
    old = tmp_path / "old.bin"
    old.write_bytes(b"old")
    old.chmod(0o600)  # a replaced file gets a new file's mode, not the old one's
    write_bytes(old, b"new")
    write_text(tmp_path / "new.txt", "new")
    with atomic_text_file(tmp_path / "t.json") as handle:
        handle.write("{}")
    with atomic_folder(tmp_path / "folder") as staging:
        write_bytes(staging / "0.png", b"png")
    assert {p.name: mode(p) for p in tmp_path.iterdir()} == {
        "old.bin": file_mode,
        "new.txt": file_mode,
        "t.json": file_mode,
        "folder": folder_mode,
    }
    assert mode(tmp_path / "folder" / "0.png") == file_mode


def test_a_folder_is_replaced_whole_or_not_at_all(tmp_path: Path) -> None:
    folder = tmp_path / "masks"
    with atomic_folder(folder) as staging:
        write_bytes(staging / "0.png", b"first")
        write_bytes(staging / "1.png", b"first")
    with pytest.raises(KeyboardInterrupt), atomic_folder(folder) as staging:
        write_bytes(staging / "0.png", b"second")
        raise KeyboardInterrupt
    assert [p.name for p in tmp_path.iterdir()] == ["masks"]
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == {
        "0.png": b"first",
        "1.png": b"first",
    }
    with atomic_folder(folder) as staging:
        write_bytes(staging / "0.png", b"third")
    assert [p.name for p in tmp_path.iterdir()] == ["masks"]
    assert [(p.name, p.read_bytes()) for p in folder.iterdir()] == [("0.png", b"third")]


# --------------------------------------------------------------------------- the commands


def _eval_set(root: Path) -> Path:
    from skimage import data

    sharp = data.astronaut()[:48, :64]
    for folder, rgb in (("input", np.roll(sharp, 2, axis=1)), ("target", sharp)):
        (root / folder).mkdir(parents=True)
        Image.fromarray(rgb).save(root / folder / "astronaut.png")
    return root


def _paths(root: Path, label: str = "") -> dict[str, Path]:
    """Everything under ``root`` (not ``root`` itself), by ``label`` + relative path."""
    return {f"{label}{p.relative_to(root)}": p for p in root.rglob("*")}


def test_every_file_the_commands_write_follows_the_umask(
    tmp_path: Path,
    tiny_env_factory: TinyEnvFactory,
    umask: Callable[[int], None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    umask(0o022)
    home = Path(os.environ["SAM_DEBLUR_HOME"])
    env = tiny_env_factory(imported=[SAM_NAME, "segnafnet-gopro"])  # weights.import_weights
    photo = save_photo(tmp_path / "photos" / "astronaut.png")
    out = tmp_path / "out"
    cpu = ["--device", "cpu", "--no-tlc"]
    commands = [
        ["weights", "import", "nafnet-gopro", env.checkpoints["nafnet-gopro"]],
        [photo, "-o", out / "deblurred.png", *cpu],
        [photo, "-o", out / "deblurred.jpg", "--model", "nafnet-gopro", *cpu],
        ["masks", photo, "-o", out / "masks", "--format", "all", "--device", "cpu"],
        ["eval", _eval_set(tmp_path / "set"), "-m", "nafnet-gopro", *cpu, "--csv",
         out / "eval.csv", "--json", out / "eval.json"],
    ]  # fmt: skip
    for argv in commands:
        code, _, err = run_cli(capsys, *argv)
        assert code == 0, err

    paths = {**_paths(out), **_paths(home, "HOME/")}
    files = {name: oct(mode(p)) for name, p in paths.items() if p.is_file()}
    folders = {name: oct(mode(p)) for name, p in paths.items() if p.is_dir()}
    cache = [p.relative_to(home) for p in (home / "masks").rglob("*") if p.is_file()]
    assert {p.suffix for p in cache} == {".png", ".json"}  # the mask cache: segmask + record
    expected = {
        "deblurred.png",
        "deblurred.jpg",
        "masks/astronaut_segmask.png",
        "masks/astronaut_groups.npz",
        "masks/astronaut_overlay.png",
        "masks/astronaut_masks.json",
        "masks/astronaut/metadata.csv",
        "masks/astronaut/0.png",
        "eval.csv",
        "eval.json",
        "HOME/verified.json",
        "HOME/imported/index.json",
        *(f"HOME/imported/{n}/{n}.pth" for n in (SAM_NAME, "segnafnet-gopro", "nafnet-gopro")),
        *(f"HOME/{p}" for p in cache),
    }
    assert expected <= set(files), sorted(expected - set(files))
    assert files == {name: "0o644" for name in files}
    assert {"masks", "masks/astronaut", "HOME/imported", "HOME/masks"} <= set(folders)
    assert folders == {name: "0o755" for name in folders}
    assert oct(mode(out)) == "0o755"
