"""`sam-deblur IMAGE...`: the default command, driven in-process and as the console script."""

from __future__ import annotations

import subprocess
import sys


def test_default_command_help_answers_without_importing_torch() -> None:
    code = (
        "import sys; from sam_deblur_cli.cli import main; rc = main(['photo.jpg', '--help']);"
        "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert "sam-deblur deblur" in out.stdout
    for option in ("--masks", "--require-gpu", "--tlc", "--overlay", "--json", "--points-per-side"):
        assert option in out.stdout
