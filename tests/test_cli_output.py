"""One rule for terminal output: text from users, files and exceptions is never read as markup.

Rich reads ``[serve]`` in ``pip install 'sam-deblur-cli[serve]'`` as a style tag and drops it;
``cli/output.py`` escapes such text once. These tests print the real install hints and
bracketed file names through the CLI's own paths and find them intact.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_models import TinyEnv, console_script, run_cli

from sam_deblur_cli.batch.ray import INSTALL_HINT
from sam_deblur_cli.cli.output import fail, failure_table, note, say
from sam_deblur_cli.imageio.formats import _HEIF_ADVICE

SERVE_HINT = "pip install 'sam-deblur-cli[serve]'"


def test_install_hints_and_bracketed_names_print_as_written(
    capsys: pytest.CaptureFixture[str],
) -> None:
    fail(f"run `{SERVE_HINT}`.", 2)
    note(f"--engine ray needs Ray Data; install it with {INSTALL_HINT}.")
    say(f"photo [1].jpg: is a HEIF/HEIC image, {_HEIF_ADVICE}", label="failed:", style="red")
    say("[bold]model[/bold] -> out [x].png", stdout=True)
    records = [{"input": "/in/photo [1].jpg", "error": "[red]bad[/red] bytes"}]
    failure_table(records, 2)
    out, err = capsys.readouterr()
    assert f"error: run `{SERVE_HINT}`." in err
    assert f"note: --engine ray needs Ray Data; install it with {INSTALL_HINT}." in err
    assert "failed: photo [1].jpg: is a HEIF/HEIC image" in err
    assert "`pip install 'sam-deblur-cli[heif]'`" in err
    assert "photo [1].jpg" in err.split("failed")[-1] and "[red]bad[/red] bytes" in err
    assert out == "[bold]model[/bold] -> out [x].png\n"


def test_a_missing_bracketed_file_is_named_intact(
    tiny_env: TinyEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "photo [1] [bold]x[/bold].jpg"
    code, _, err = run_cli(capsys, missing, "--device", "cpu")
    assert code == 1, err
    assert f"{missing}: no such file" in err


def test_ray_install_hint_keeps_its_extra(
    tiny_env: TinyEnv,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    (tmp_path / "in").mkdir()
    from tiny_models import save_photo

    save_photo(tmp_path / "in" / "a.png")
    code, _, err = run_cli(
        capsys, "batch", tmp_path / "in", "-o", tmp_path / "out", "--engine", "ray"
    )
    assert code == 2 and INSTALL_HINT in err, err


@pytest.mark.subprocess
def test_serve_without_its_extra_names_the_extra(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    # A None entry makes `import uvicorn` raise ImportError, as when the extra is absent.
    (site / "sitecustomize.py").write_text("import sys\nsys.modules['uvicorn'] = None\n")
    env = _env()
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    run = subprocess.run(
        [str(console_script()), "serve"], capture_output=True, text=True, env=env, timeout=60
    )
    assert run.returncode == 2, run.stderr
    assert f"run `{SERVE_HINT}`." in run.stderr


def _env() -> dict[str, str]:
    return {**os.environ, "COLUMNS": "200"}
