"""`sam-deblur batch IN_DIR -o OUT_DIR`: resume, isolation of failures, exit codes."""

from __future__ import annotations

import subprocess
import sys


def test_batch_help_answers_without_importing_torch() -> None:
    code = (
        "import sys; from sam_deblur_cli.cli import main; rc = main(['batch', '--help']);"
        "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert "sam-deblur batch" in out.stdout and "--recursive" in out.stdout
