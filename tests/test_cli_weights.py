"""`sam-deblur weights ...` end to end: list, download, verify, path, import, remove."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hub_server import FakeHub, Published, tiny_state_dict, torch_bytes

from sam_deblur_cli import weights
from sam_deblur_cli.cli import main


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # Rich tables must not wrap


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["weights", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_list_shows_every_model_with_its_state(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "list")
    assert code == 0
    header = next(line for line in out.splitlines() if "name" in line)
    assert [w for w in header.replace("┃", " ").split()] == [
        "name", "kind", "size", "source", "cached", "verified",
    ]  # fmt: skip
    row = next(line for line in out.splitlines() if " sam-vit-h " in line)
    assert "2.6 GB" in row and "hub ybelkada/segment-anything" in row and " no " in row
    row = next(line for line in out.splitlines() if " segnafnet-gopro " in line)
    assert "page github.com/HPLQAQ/SAM-Deblur (import)" in row


def test_list_json_is_one_record_per_model(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "list", "--json")
    records = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(records) == len(weights.load_manifest())
    by_name = {r["name"]: r for r in records}
    vit_b = by_name["sam-vit-b"]
    assert vit_b["sha256"].startswith("ec2df627") and vit_b["size"] == 375042383
    assert vit_b["source"]["type"] == "hub"
    assert vit_b["source"]["revision"] == "7790786db131bcdc639f24a915d9f2c331d843ee"
    assert (vit_b["cached"], vit_b["verified"], vit_b["path"]) == (False, False, None)
    default = by_name["segnafnet-gopro"]
    assert (default["tlc"], default["recipe"], default["sha256"]) == (
        True,
        "sam-deblur-gopro",
        None,
    )


def test_download_then_list_path_verify_remove(
    hub: FakeHub, published: Published, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "download", "tiny-plain", "blob")
    assert code == 0, err
    paths = dict(line.split("\t") for line in out.splitlines())
    assert Path(paths["blob"]).read_bytes() == published.files["blob"]

    _, out, _ = run(capsys, "list", "--json")
    record = next(json.loads(x) for x in out.splitlines() if '"tiny-plain"' in x)
    assert (record["cached"], record["verified"], record["path"]) == (
        True,
        True,
        paths["tiny-plain"],
    )

    assert run(capsys, "path", "blob")[:2] == (0, paths["blob"] + "\n")

    code, out, _ = run(capsys, "verify")
    assert code == 0 and sorted(line.split("\t")[0] for line in out.splitlines()) == [
        "blob", "tiny-plain",
    ]  # fmt: skip

    code, out, _ = run(capsys, "remove", "blob")
    assert code == 0 and out == f"blob\tremoved\t{paths['blob']}\n"
    code, _, err = run(capsys, "path", "blob")
    assert code == 2 and "`sam-deblur weights download blob`" in err


def test_verify_catches_a_corrupted_file_and_removes_it(
    hub: FakeHub, published: Published, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "download", "blob")[0] == 0
    blob = weights.locate(weights.load_manifest().get("blob"))
    assert blob is not None
    real = blob.resolve()
    real.chmod(0o644)
    with real.open("r+b") as f:
        f.seek(100)
        f.write(b"corrupt")
    code, _, err = run(capsys, "verify", "blob")
    assert code == 2
    assert weights.load_manifest().get("blob").sha256 in err and "was removed" in err
    assert not real.exists()


def test_download_failures_are_one_line_each_and_the_rest_still_runs(
    hub: FakeHub, published: Published, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "download", "tiny-map", "no-file", "tiny-plain")
    assert code == 2
    assert out.startswith("tiny-plain\t")
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 2
    assert "`sam-deblur weights import tiny-map PATH/TO/TinyMap.pth`" in lines[0]
    assert "has no file absent.bin" in lines[1]
    assert "Traceback" not in err


def test_offline_download_of_an_uncached_model_explains(
    hub: FakeHub, published: Published, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "download", "--offline", "tiny-plain")
    assert code == 2 and "offline mode is on (--offline)" in err
    assert hub.requests == []


def test_import_accepts_the_right_file_and_refuses_the_wrong_one(
    published: Published, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "TinyMap.pth"
    good.write_bytes(torch_bytes({"params": tiny_state_dict("map")}))
    code, out, err = run(capsys, "import", "tiny-map", str(good))
    assert code == 0, err
    dest = Path(out.strip())
    assert dest.read_bytes() == good.read_bytes() and dest != good
    assert run(capsys, "path", "tiny-map")[1].strip() == str(dest)

    wrong = tmp_path / "wrong.pth"
    wrong.write_bytes(torch_bytes({"params": tiny_state_dict("plain")}))
    code, _, err = run(capsys, "import", "tiny-plain", str(tmp_path / "absent.pth"))
    assert code == 2 and "is not a file" in err
    code, _, err = run(capsys, "import", "tiny-map", str(wrong))
    assert code == 2 and "cannot be imported as tiny-map" in err and "pre_seg" in err
    assert run(capsys, "path", "tiny-map")[1].strip() == str(dest)  # the good import stays


def test_unknown_model_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "path", "no-such-model")
    assert code == 2 and "Unknown model 'no-such-model'" in err


class _Payload:
    """Pickles as a call to ``Path.touch``: a checkpoint carrying code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (Path.touch, (self.marker,))


def _bad_checkpoint(kind: str, path: Path) -> None:
    """Write the file a user might end up with instead of the checkpoint."""
    import pickle
    import zipfile

    good = torch_bytes({"params": tiny_state_dict("map")})
    if kind == "text":
        path.write_text("hello\n")
    elif kind == "html":
        path.write_text("<!DOCTYPE html>\n<html><head><title>Drive</title></head></html>\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("SAM-Deblur/README.md", "weights are elsewhere")
    elif kind == "pickled-code":
        with path.open("wb") as f:  # protocol 4: torch warns about it before refusing
            pickle.dump({"params": _Payload(path.with_name("pwned"))}, f, protocol=4)
    else:
        path.write_bytes(torch_bytes({"params": tiny_state_dict("plain")}))


@pytest.mark.filterwarnings("error")  # a library warning reaching the user fails the test
@pytest.mark.parametrize(
    ("kind", "says"),
    [
        ("text", "is a text file, not a weights file"),
        ("html", "is a web page (HTML), not a weights file: the browser saved the download page"),
        ("empty", "is empty (0 bytes); download the file again"),
        ("truncated", "is truncated or damaged ("),
        ("zip", "is a zip archive without a PyTorch state dict (it holds SAM-Deblur/README.md)"),
        ("pickled-code", "contains pickled code, which is never run for safety"),
        ("wrong-architecture", "does not fit this network (missing keys: pre_seg"),
    ],
)
def test_import_names_what_a_bad_file_is_in_one_line(
    published: Published,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    kind: str,
    says: str,
) -> None:
    bad = tmp_path / "TinyMap.pth"
    _bad_checkpoint(kind, bad)
    code, out, err = run(capsys, "import", "tiny-map", str(bad))
    assert code == 2 and out == ""
    assert err.startswith(f"error: {bad} cannot be imported as tiny-map: "), err
    assert says in err and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and "Warning" not in err
    assert not (tmp_path / "pwned").exists()
    assert run(capsys, "path", "tiny-map")[0] == 2  # nothing was imported


def test_an_unreachable_hub_names_the_file_to_import(
    published: Published, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    code, _, err = run(capsys, "download", "tiny-plain")
    assert code == 2 and "http://127.0.0.1:9 cannot be reached" in err
    assert "set HF_ENDPOINT to a mirror" in err
    assert "`sam-deblur weights import tiny-plain PATH/TO/tiny-plain.pth`" in err
    assert "https://huggingface.co/org/nets/resolve/" in err  # where the file itself lies


def test_a_missing_drive_hosted_model_names_the_hub_model_that_works_at_once(
    published: Published, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tiny_models import save_photo

    photo = save_photo(tmp_path / "a.png")
    code = main([str(photo), "-m", "tiny-map", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2
    assert "`sam-deblur weights import tiny-map PATH/TO/TinyMap.pth`" in err
    assert "or deblur right away without masks with `-m tiny-plain`" in err
    assert len(err.strip().splitlines()) == 1


def test_list_never_cuts_a_model_name(capsys: pytest.CaptureFixture[str]) -> None:
    from sam_deblur_cli.cli.output import console

    width = console.width
    console.width = 80  # a standard terminal: the real manifest's table is wider than that
    try:
        code, out, _ = run(capsys, "list")
    finally:
        console.width = width
    assert code == 0 and "…" not in out
    names = {line.split("│")[1].strip() for line in out.splitlines() if line.startswith("│")}
    assert {entry.name for entry in weights.load_manifest()} <= names
