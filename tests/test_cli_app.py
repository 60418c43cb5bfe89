"""The CLI shell: version, help, default command routing, error crossing."""

from __future__ import annotations

import subprocess
import sys

from sam_deblur_cli import __version__
from sam_deblur_cli.cli import main


def test_version_is_printed_without_importing_torch() -> None:
    code = (
        "import sys; from sam_deblur_cli.cli import main; rc = main(['--version']);"
        "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"sam-deblur {__version__}"


def test_help_lists_commands_without_importing_torch() -> None:
    code = (
        "import sys; from sam_deblur_cli.cli import main; rc = main(['--help']);"
        "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert "Usage" in out.stdout


def test_unknown_option_is_a_usage_error() -> None:
    assert main(["--no-such-option"]) == 2
