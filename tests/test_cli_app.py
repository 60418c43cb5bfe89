"""The CLI shell: version, help, default command routing, error crossing."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sam_deblur_cli import __version__
from sam_deblur_cli.cli import main

DEBLUR_OPTIONS = ("--masks", "--require-gpu", "--tlc", "--overlay", "--json", "--points-per-side")


# ``expected``: a string is the whole output (stripped); a tuple lists text the output contains.
@pytest.mark.subprocess
@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        pytest.param(["--version"], f"sam-deblur {__version__}", id="version"),
        pytest.param(["--help"], ("Usage",), id="help"),
        pytest.param(
            ["photo.jpg", "--help"], ("sam-deblur deblur", *DEBLUR_OPTIONS), id="deblur-help"
        ),
        pytest.param(["batch", "--help"], ("sam-deblur batch", "--recursive"), id="batch-help"),
        pytest.param(["weights", "list"], ("sam-vit-h",), id="weights-list"),
        pytest.param(
            ["train", "--help"], ("sam-deblur train", "--resume", "--accum"), id="train-help"
        ),
        pytest.param(
            ["serve", "--help"], ("sam-deblur serve", "--host", "--port"), id="serve-help"
        ),
    ],
)
def test_answers_without_importing_torch(argv: list[str], expected: str | tuple[str, ...]) -> None:
    code = (
        f"import sys; from sam_deblur_cli.cli import main; rc = main({argv!r});"
        "assert 'torch' not in sys.modules, 'torch imported';"
        "assert 'fastapi' not in sys.modules, 'fastapi imported'; sys.exit(rc)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    if isinstance(expected, str):
        assert out.stdout.strip() == expected
    else:
        for text in expected:
            assert text in out.stdout


def test_unknown_option_is_a_usage_error() -> None:
    assert main(["--no-such-option"]) == 2
