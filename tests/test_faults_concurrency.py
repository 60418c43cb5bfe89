"""Two processes at once: on the same output folder, the same mask cache entry, the same
weights download and the same cache index. No torn file, every output complete, no update
lost, no temporary file left."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from faults import all_entries, fault_env, same_tree
from hub_server import FakeHub, Published
from tiny_models import TinyEnv, console_script, run_cli, save_photo

pytestmark = pytest.mark.subprocess

PLAIN = ["--model", "nafnet-gopro", "--no-tlc", "--device", "cpu"]
REPO = Path(__file__).resolve().parents[1]


def _python(code: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], env=env, stderr=subprocess.PIPE, text=True
    )


def _finish(children: list[subprocess.Popen[str]]) -> None:
    for child in children:
        _, err = child.communicate(timeout=240)
        assert child.returncode == 0, err


def test_two_batches_into_the_same_folder_leave_one_complete_set_of_outputs(
    tiny_env: TinyEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in"
    for index, name in enumerate(("astronaut", "chelsea", "coffee")):
        save_photo(src / f"p{index}.png", name)
    code, _, err = run_cli(capsys, "batch", src, "-o", tmp_path / "alone", *PLAIN)
    assert code == 0, err
    argv = [str(console_script()), "batch", str(src), "-o", str(tmp_path / "out"), *PLAIN]
    env = fault_env(tiny_env)
    both = [
        subprocess.Popen(
            argv, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
        )
        for _ in range(2)
    ]
    _finish(both)  # type: ignore[arg-type]
    assert same_tree(tmp_path / "out", tmp_path / "alone"), all_entries(tmp_path / "out")


MASK_WRITER = """
import sys
import numpy as np
from sam_deblur_cli.masks.cache import MaskCache
cache, segmask = MaskCache(sys.argv[1]), np.load(sys.argv[2])
for _ in range(int(sys.argv[3])):
    cache.put("ab" + "0" * 62, segmask, 7)
    cache._paths("ab" + "0" * 62)[1].unlink(missing_ok=True)  # empty it again: rewrite
"""


def test_two_processes_filling_the_same_mask_cache_entry_never_tear_it(tmp_path: Path) -> None:
    from sam_deblur_cli.masks.cache import MaskCache

    rng = np.random.default_rng(23)
    segmask = (rng.integers(0, 8, (96, 128)) * 30).astype(np.uint8)
    np.save(tmp_path / "segmask.npy", segmask)
    root, key = tmp_path / "cache", "ab" + "0" * 62
    writers = [_python(MASK_WRITER, str(root), str(tmp_path / "segmask.npy"), "60") for _ in "ab"]
    cache, hits = MaskCache(root), 0
    while any(w.poll() is None for w in writers):
        got = cache.get(key, (96, 128))  # a damaged entry would log and be deleted
        if got is not None:
            hits += 1
            assert got.count == 7 and np.array_equal(got.segmask, segmask)
    _finish(writers)
    cache.put(key, segmask, 7)
    assert all_entries(root / "ab") == [f"{key}.json", f"{key}.png"]
    assert hits > 0


INDEX_WRITER = """
import sys
from pathlib import Path
from sam_deblur_cli.weights import cache
for i in range(int(sys.argv[2])):
    path = Path(sys.argv[1]) / f"{sys.argv[3]}-{i}.bin"
    path.write_bytes(b"x")
    cache.remember(path, "0" * 64)
"""


def test_two_processes_recording_verified_files_lose_no_update(tmp_path: Path) -> None:
    from sam_deblur_cli.weights import cache

    files = tmp_path / "files"
    files.mkdir()
    writers = [_python(INDEX_WRITER, str(files), "40", name) for name in "ab"]
    _finish(writers)
    records = json.loads((cache.cache_root() / "verified.json").read_text())
    assert len(records) == 80


def test_two_downloads_of_the_same_model_give_one_complete_verified_file(
    hub: FakeHub, published: Published
) -> None:
    argv = [str(console_script()), "weights", "download", "blob"]
    both = [
        subprocess.Popen(
            argv, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    paths = []
    for child in both:
        out, err = child.communicate(timeout=240)
        assert child.returncode == 0, err
        paths.append(out.split("\t")[-1].strip())
    assert paths[0] == paths[1] and Path(paths[0]).read_bytes() == published.files["blob"]
    started = time.monotonic()
    verify = subprocess.run(
        [str(console_script()), "weights", "verify", "blob"],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert verify.returncode == 0, verify.stderr
    assert time.monotonic() - started < 120
    leftovers = [p for p in Path(paths[0]).resolve().parent.iterdir() if ".incomplete" in p.name]
    assert leftovers == []
