"""`sam-deblur eval`: options, exit codes and output, driven through the real CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sam_deblur_cli.cli import main


def test_eval_help_does_not_import_torch() -> None:
    code = (
        "import sys; from sam_deblur_cli.cli import main; rc = main(['eval', '--help']);"
        "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert "--masks-from" in out.stdout and "--tlc" in out.stdout


def test_a_folder_that_is_not_a_dataset_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["eval", str(tmp_path)]) == 2
    assert "input/ and target/" in capsys.readouterr().err


def test_a_bad_tile_size_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for folder in ("input", "target"):
        (tmp_path / folder).mkdir()
    assert main(["eval", str(tmp_path), "--tile", "big"]) == 2
    assert "tile size" in capsys.readouterr().err.lower()


def test_an_unknown_ssim_variant_is_a_usage_error(tmp_path: Path) -> None:
    assert main(["eval", str(tmp_path), "--ssim", "4d"]) == 2
