"""`sam-deblur train`: a tiny run end to end, the model usable at once, bad input exits 2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_models import TinyEnv
from train_data import write_pairs
from typer.testing import CliRunner

from sam_deblur_cli.cli import main
from sam_deblur_cli.cli.app import app
from sam_deblur_cli.weights import load_manifest

TINY = ["--width", "8", "--enc-blocks", "1,1,1,1", "--crop", "32", "--batch", "2"]
TINY += ["--workers", "0", "--lr", "5e-3", "-q"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_train_registers_a_local_model_that_deblurs_at_once(
    tiny_env: TinyEnv, tmp_path: Path
) -> None:
    pairs = write_pairs(tmp_path / "pairs")
    run = tmp_path / "my-run"
    argv = ["train", str(pairs), "-o", str(run), "--variant", "map", "--steps", "3", *TINY]
    assert main(argv) == 0
    assert (run / "model.pth").is_file() and (run / "config.json").is_file()
    assert (run / "log.csv").read_text().startswith("step,loss,lr,images_per_s")
    entry = load_manifest().get("my-run")
    assert entry.net is not None and entry.net.variant == "map" and entry.net.width == 8
    assert entry.recipe == load_manifest().get("segnafnet-gopro").recipe  # the default recipe
    listing = CliRunner().invoke(app, ["weights", "list", "--json"])
    assert '"type": "local"' in listing.stdout and '"name": "my-run"' in listing.stdout
    out = tmp_path / "out.png"
    photo = pairs / "input" / "a.png"
    mask = pairs / "input_mask" / "a.png"
    assert main([str(photo), "--model", "my-run", "--masks", str(mask), "-o", str(out)]) == 0
    assert np.asarray(Image.open(out)).shape == (96, 96, 3)
    # a second run into the same folder is refused and changes nothing
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    assert main(argv) == 2
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before
    # removing the trained model says what it does: the name goes, the file stays
    removal = CliRunner().invoke(app, ["weights", "remove", "my-run"])
    assert removal.exit_code == 0
    assert removal.stdout == f"my-run\tunregistered\t{(run / 'model.pth').resolve()}\n"
    assert "its file" in removal.stderr and "was kept" in removal.stderr
    assert (run / "model.pth").is_file() and "my-run" not in load_manifest().entries


@pytest.mark.filterwarnings("error")  # torch warns when workers outnumber the CPUs
def test_workers_default_to_what_the_machine_has(tiny_env: TinyEnv, tmp_path: Path) -> None:
    import json
    import os

    pairs = write_pairs(tmp_path / "pairs")
    run = tmp_path / "run"
    argv = ["train", str(pairs), "-o", str(run), "--variant", "plain", "--steps", "1"]
    no_workers = [arg for arg in TINY if arg not in ("--workers", "0")]
    assert main([*argv, *no_workers]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["workers"] == min(4, len(os.sched_getaffinity(0)))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--crop", "512"], "smaller than the 512 x 512 crop"),
        (["--init", "no-such-model"], "Unknown model"),
        (["--variant", "cat", "--init", "{segnafnet}"], "does not fit"),
        (["--batch", "3", "--accum", "2"], "does not split"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    tiny_env: TinyEnv,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    pairs = write_pairs(tmp_path / "pairs")
    extra = [e.replace("{segnafnet}", str(tiny_env.checkpoints["segnafnet-gopro"])) for e in extra]
    argv = ["train", str(pairs), "-o", str(tmp_path / "run"), "--variant", "map", "--steps", "2"]
    assert main([*argv, *TINY, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("error:") == 1
    assert not (tmp_path / "run").exists()
