"""Every check that needs no model answers before a model is built or downloaded.

The runs here have no model in the cache at all (``imported=[]``): a command that loaded
one first would end in "segnafnet-gopro is not on the Hugging Face Hub" instead of the
answer checked, so each test shows that its answer needs no model (and so comes at once,
well under the 2 s the issue asks for).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tiny_models import TinyEnv, TinyEnvFactory, run_cli, save_photo

NOT_CACHED = "segnafnet-gopro is not on the Hugging Face Hub"  # the model is missing


def _records(stdout: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


@pytest.fixture
def no_models(tiny_env_factory: TinyEnvFactory) -> TinyEnv:
    return tiny_env_factory(imported=[])


def test_a_missing_input_and_a_non_image_fail_before_any_model(
    no_models: TinyEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tmp_path / "notes.jpg"
    text.write_text("hello\n")
    code, out, err = run_cli(capsys, tmp_path / "missing.jpg", text, "--json")
    assert code == 1, err
    records = _records(out)
    assert [r["status"] for r in records] == ["failed", "failed"]
    assert "missing.jpg: no such file" in str(records[0]["error"])
    assert "notes.jpg: not an image file" in str(records[1]["error"])
    assert NOT_CACHED not in err


def test_existing_outputs_are_skipped_before_any_model(
    no_models: TinyEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photo = save_photo(tmp_path / "a.png")
    (tmp_path / "a_deblurred.png").write_bytes(b"kept")
    code, out, err = run_cli(capsys, photo, "--json")
    assert code == 0, err
    assert _records(out)[0]["status"] == "skipped"
    assert (tmp_path / "a_deblurred.png").read_bytes() == b"kept"


def test_a_batch_with_everything_done_loads_nothing(
    no_models: TinyEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("a.png", "b.jpg"):
        save_photo(tmp_path / "in" / name)
        save_photo(tmp_path / "out" / name)
    code, out, err = run_cli(capsys, "batch", tmp_path / "in", "-o", tmp_path / "out", "--json")
    assert code == 0, err
    assert [r["status"] for r in _records(out)] == ["skipped", "skipped"]


def test_o_file_with_several_inputs_is_a_usage_error(
    no_models: TinyEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = save_photo(tmp_path / "a.png"), save_photo(tmp_path / "b.png")
    code, _, err = run_cli(capsys, a, b, "-o", tmp_path / "one.jpg")
    assert code == 2
    assert "-o" in err and "names one file, but 2 inputs were given" in err
    assert not (tmp_path / "one.jpg").exists()
    # A folder is still a folder, with or without a slash.
    code, _, err = run_cli(capsys, a, b, "-o", f"{tmp_path / 'out.d'}/")
    assert NOT_CACHED in err  # past the checks: only now is a model needed


@pytest.fixture
def immutable_folder(tmp_path: Path) -> Iterator[Path]:
    """A folder nobody, root included, can create a file in (``chattr +i``)."""
    folder = tmp_path / "rodir"
    folder.mkdir()
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(folder)], check=False).returncode:
        pytest.skip("chattr +i is not available here")
    try:
        yield folder
    finally:
        subprocess.run([chattr, "-i", str(folder)], check=True)


def test_an_unwritable_output_stops_the_run_before_any_model(
    no_models: TinyEnv,
    tmp_path: Path,
    immutable_folder: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    photo = save_photo(tmp_path / "a.png")
    code, _, err = run_cli(capsys, photo, "-o", immutable_folder / "out.jpg")
    assert code == 2, err
    assert f"Cannot write into {immutable_folder} (Operation not permitted)" in err
    code, _, err = run_cli(capsys, "batch", tmp_path, "-o", immutable_folder / "sub")
    assert code == 2 and f"Cannot write into {immutable_folder}" in err
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    code, _, err = run_cli(capsys, photo, "-o", blocker / "out.png")
    assert code == 2 and f"{blocker} is a file, so nothing can be written" in err


def test_missing_sam_is_reported_before_the_network_is_built(
    tiny_env_factory: TinyEnvFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tiny_env_factory(imported=["segnafnet-gopro"])  # the network, but no SAM
    photo = save_photo(tmp_path / "a.png")
    code, _, err = run_cli(capsys, photo, "-v", "--device", "cpu")
    assert code == 2 and "sam-vit-h is not on the Hugging Face Hub" in err, err
    assert "loaded segnafnet-gopro" not in err  # -v logs each network it builds


def test_an_empty_batch_is_nothing_to_do_with_its_own_exit_code(
    no_models: TinyEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "in").mkdir()
    code, out, err = run_cli(capsys, "batch", tmp_path / "in", "-o", tmp_path / "out", "--json")
    assert code == 3, err
    assert _records(out) == [
        {
            "status": "nothing-to-do",
            "error": None,
            "message": f"{tmp_path / 'in'} holds no images or videos (add -r for sub-folders).",
        }
    ]
    assert err.startswith("nothing to do: ")


@pytest.mark.subprocess
def test_the_fail_fast_answers_import_no_torch(no_models: TinyEnv, tmp_path: Path) -> None:
    """In a child process: a missing file, an existing output and a finished batch are
    answered without importing torch, so no model can have been built."""
    photo = save_photo(tmp_path / "in" / "a.png")
    save_photo(tmp_path / "out" / "a.png")
    runs = [
        ([str(tmp_path / "missing [1].jpg")], 1),
        ([str(photo), "-o", str(tmp_path / "out" / "a.png")], 0),
        (["batch", str(tmp_path / "in"), "-o", str(tmp_path / "out")], 0),
    ]
    code = (
        "import sys; from sam_deblur_cli.cli import main; rc = main(sys.argv[1:]);"
        "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)"
    )
    env = no_models.subprocess_env(tiny_sam=False)
    errors = []
    for argv, expected in runs:
        run = subprocess.run(
            [sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env
        )
        assert run.returncode == expected, run.stderr
        errors.append(run.stderr)
    assert errors[0] == f"failed: {tmp_path / 'missing [1].jpg'}: no such file; check the path.\n"


def test_eval_of_an_empty_dataset_is_nothing_to_do(
    no_models: TinyEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for folder in ("input", "target"):
        (tmp_path / "set" / folder).mkdir(parents=True)
    code, out, err = run_cli(capsys, "eval", tmp_path / "set", "--json", "--device", "cpu")
    assert code == 3, err
    (record,) = _records(out)
    assert record["status"] == "nothing-to-do" and record["error"] is None
    assert f"{tmp_path / 'set' / 'input'} holds no images to evaluate" in str(record["message"])
    assert err.startswith("nothing to do: ") and NOT_CACHED not in err


def test_overlay_with_a_model_without_masks_is_a_usage_error(
    no_models: TinyEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photo = save_photo(tmp_path / "a.png")
    code, _, err = run_cli(capsys, photo, "--overlay", "-m", "nafnet-gopro")
    assert code == 2
    assert "--overlay draws the SAM masks a model uses, and nafnet-gopro takes none" in err
    assert not (tmp_path / "a_deblurred.png").exists()
