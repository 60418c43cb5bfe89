"""batch/overlap.py: a batch with its inputs overlapped gives a sequential run's bytes and
records, isolates failures, stops cleanly, and keeps at most ``in_flight`` inputs in flight."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tiny_models import TinyEnv, save_photo, tree_hashes

from sam_deblur_cli.amg import RecipeOverrides
from sam_deblur_cli.batch import local
from sam_deblur_cli.batch.local import BatchCallbacks, run_batch
from sam_deblur_cli.batch.overlap import Overlap
from sam_deblur_cli.batch.plan import Job, plan_batch
from sam_deblur_cli.errors import OutOfSpaceError
from sam_deblur_cli.pipeline import Deblurrer, DeblurSettings, FileOptions

PHOTOS = ("astronaut", "chelsea", "coffee", "astronaut", "chelsea", "coffee")
SEQUENTIAL = Overlap(in_flight=1)


@pytest.fixture(name="folder")
def folder_fixture(tmp_path: Path) -> Path:
    """Six small photos in tmp_path/in (a.png ... f.png), some repeated (masks cache hits)."""
    for letter, photo in zip("abcdef", PHOTOS, strict=True):
        save_photo(tmp_path / "in" / f"{letter}.png", photo)
    return tmp_path / "in"


@pytest.fixture(autouse=True)
def _no_thread_left() -> Iterator[None]:
    yield
    assert not [t.name for t in threading.enumerate() if t.name.startswith("batch")]


def _jobs(folder: Path, out: Path) -> list[Job]:
    return plan_batch(folder, out)


def _without_seconds(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


@pytest.mark.parametrize(
    ("model", "beside"),
    [("nafnet-gopro", None), ("segnafnet-gopro", None), ("segnafnet-gopro", True)],
)
def test_overlapped_batch_writes_the_sequential_bytes_and_records(
    tiny_env: TinyEnv, folder: Path, tmp_path: Path, model: str, beside: bool | None
) -> None:
    deblurrer = Deblurrer(DeblurSettings(recipe=RecipeOverrides(model=model), device="cpu"))
    options = FileOptions(overlay=model != "nafnet-gopro")
    one_by_one = run_batch(
        deblurrer, _jobs(folder, tmp_path / "seq"), options=options, overlap=SEQUENTIAL
    )
    done: list[str] = []
    overlapped = run_batch(
        deblurrer,
        _jobs(folder, tmp_path / "ovl"),
        options=options,
        overlap=Overlap(in_flight=3, masks_beside_network=beside),
        callbacks=BatchCallbacks(on_done=lambda job, record: done.append(job.src.name)),
    )
    assert [r["status"] for r in overlapped] == ["ok"] * len(PHOTOS)
    assert done == [f"{letter}.png" for letter in "abcdef"]  # reported in job order
    seq, ovl = tree_hashes(tmp_path / "seq"), tree_hashes(tmp_path / "ovl")
    assert [p.name for p in seq] == [p.name for p in ovl] and len(seq) >= len(PHOTOS)
    assert list(seq.values()) == list(ovl.values())
    strip = [{**r, "output": Path(r["output"]).name, "overlay": None} for r in one_by_one]
    same = [{**r, "output": Path(r["output"]).name, "overlay": None} for r in overlapped]
    assert _without_seconds(strip) == _without_seconds(same)
    assert all(
        set(r["seconds"]) == set(s["seconds"]) for r, s in zip(one_by_one, overlapped, strict=True)
    )


def test_stages_run_where_the_device_policy_says(
    tiny_env: TinyEnv, folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deblurrer = Deblurrer(
        DeblurSettings(recipe=RecipeOverrides(model="segnafnet-gopro"), device="cpu")
    )
    where: dict[str, set[str]] = {"masks": set(), "deblur": set(), "read": set()}
    real_masks, real_deblur, real_read = deblurrer.compute_masks, deblurrer.deblur, local.timed_read

    def masks(rgb: np.ndarray) -> Any:
        where["masks"].add(threading.current_thread().name)
        return real_masks(rgb)

    def deblur(rgb: np.ndarray, masks: Any = None) -> np.ndarray:
        where["deblur"].add(threading.current_thread().name)
        return real_deblur(rgb, masks)

    def read(src: Path, options: FileOptions) -> Any:
        where["read"].add(threading.current_thread().name)
        return real_read(src, options)

    monkeypatch.setattr(deblurrer, "compute_masks", masks)
    monkeypatch.setattr(deblurrer, "deblur", deblur)
    monkeypatch.setattr(local, "timed_read", read)
    run_batch(deblurrer, _jobs(folder, tmp_path / "cpu"))
    main = threading.main_thread().name
    # On the CPU SAM and the network both stay on the calling thread; decoding does not.
    assert where["masks"] == where["deblur"] == {main}
    assert main not in where["read"]
    where.update(masks=set(), deblur=set())
    run_batch(
        deblurrer, _jobs(folder, tmp_path / "beside"), overlap=Overlap(masks_beside_network=True)
    )
    assert where["deblur"] == {main} and main not in where["masks"]


def test_a_failing_input_in_the_middle_is_its_own_failed_record(
    tiny_env: TinyEnv, folder: Path, tmp_path: Path
) -> None:
    (folder / "c.png").write_bytes(b"not a png at all")
    (folder / "e.png").write_bytes((folder / "e.png").read_bytes()[:300])  # truncated
    deblurrer = Deblurrer(
        DeblurSettings(recipe=RecipeOverrides(model="segnafnet-gopro"), device="cpu")
    )
    records = run_batch(deblurrer, _jobs(folder, tmp_path / "out"))
    statuses = [r["status"] for r in records]
    assert statuses == ["ok", "ok", "failed", "ok", "failed", "ok"]
    assert [Path(r["input"]).name for r in records] == [f"{x}.png" for x in "abcdef"]
    assert all(r["error"] for r in records if r["status"] == "failed")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "a.png",
        "b.png",
        "d.png",
        "f.png",
    ]
    again = run_batch(deblurrer, _jobs(folder, tmp_path / "out"))
    statuses = ["skipped", "skipped", "failed", "skipped", "failed", "skipped"]
    assert [r["status"] for r in again] == statuses  # resume: the same failures


@pytest.mark.parametrize("where", ["deblur", "masks"])
def test_ctrl_c_in_a_stage_stops_with_no_partial_file_and_no_thread(
    tiny_env: TinyEnv,
    folder: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    where: str,
) -> None:
    deblurrer = Deblurrer(
        DeblurSettings(recipe=RecipeOverrides(model="segnafnet-gopro"), device="cpu")
    )
    calls: list[int] = []
    name = "deblur" if where == "deblur" else "compute_masks"
    real = getattr(deblurrer, name)

    def interrupted(*args: Any) -> Any:
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(deblurrer, name, interrupted)
    out = tmp_path / "out"
    overlap = Overlap(masks_beside_network=where == "masks")
    with pytest.raises(KeyboardInterrupt):
        run_batch(deblurrer, _jobs(folder, out), overlap=overlap)
    written = sorted(p.name for p in out.iterdir())  # hidden temporaries would show here
    assert written == ["a.png", "b.png", "c.png"][: len(written)]  # a prefix, whole files
    assert len(written) <= 3
    again = run_batch(  # a fresh Deblurrer (the patched one keeps interrupting)
        Deblurrer(DeblurSettings(recipe=RecipeOverrides(model="segnafnet-gopro"), device="cpu")),
        _jobs(folder, out),
    )
    assert [r["status"] for r in again].count("ok") == len(PHOTOS) - len(written)


def test_a_full_disk_stops_the_run_after_the_writes_before_it(
    tiny_env: TinyEnv, folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sam_deblur_cli import imageio

    real = imageio.write_image
    writes: list[Path] = []

    def write(path: Path, *args: Any, **kwargs: Any) -> Path:
        writes.append(Path(path))
        if len(writes) == 3:
            raise OutOfSpaceError("No space left on the device.")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(imageio, "write_image", write)
    deblurrer = Deblurrer(
        DeblurSettings(recipe=RecipeOverrides(model="nafnet-gopro"), device="cpu")
    )
    with pytest.raises(OutOfSpaceError, match="Stopped there: 4 of 6"):
        run_batch(deblurrer, _jobs(folder, tmp_path / "out"))
    assert [p.name for p in writes] == ["a.png", "b.png", "c.png"]  # writes take turns
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.png"]


@pytest.mark.parametrize("bound", [2, 3])
def test_at_most_in_flight_inputs_are_decoded_and_not_yet_written(
    tiny_env: TinyEnv, folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bound: int
) -> None:
    deblurrer = Deblurrer(
        DeblurSettings(recipe=RecipeOverrides(model="segnafnet-gopro"), device="cpu")
    )
    lock, counts = threading.Lock(), {"now": 0, "peak": 0, "reads": 0}
    enough_read = threading.Event()
    real_read, real_write, real_deblur = (
        local.timed_read,
        deblurrer.write_restored,
        deblurrer.deblur,
    )

    def read(src: Path, options: FileOptions) -> Any:
        picture = real_read(src, options)
        with lock:
            counts["now"] += 1
            counts["reads"] += 1
            counts["peak"] = max(counts["peak"], counts["now"])
            if counts["reads"] >= bound:
                enough_read.set()
        return picture

    def write(*args: Any) -> None:
        real_write(*args)
        with lock:
            counts["now"] -= 1

    def deblur(rgb: np.ndarray, masks: Any = None) -> np.ndarray:
        enough_read.wait(timeout=30)  # the first network call waits for the window to fill
        return real_deblur(rgb, masks)

    monkeypatch.setattr(local, "timed_read", read)
    monkeypatch.setattr(deblurrer, "write_restored", write)
    monkeypatch.setattr(deblurrer, "deblur", deblur)
    records = run_batch(deblurrer, _jobs(folder, tmp_path / "out"), overlap=Overlap(bound))
    assert [r["status"] for r in records] == ["ok"] * len(PHOTOS)
    assert counts["peak"] == bound and counts["now"] == 0


@pytest.mark.skipif(
    not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU (device_check.sh)"
)
def test_on_cuda_sam_runs_beside_the_network_and_the_outputs_match(
    tiny_env: TinyEnv, folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deblurrer = Deblurrer(
        DeblurSettings(recipe=RecipeOverrides(model="segnafnet-gopro"), device="cuda")
    )
    threads: set[str] = set()
    real_masks = deblurrer.compute_masks

    def masks(rgb: np.ndarray) -> Any:
        threads.add(threading.current_thread().name)
        return real_masks(rgb)

    monkeypatch.setattr(deblurrer, "compute_masks", masks)
    seq = run_batch(deblurrer, _jobs(folder, tmp_path / "seq"), overlap=SEQUENTIAL)
    threads.clear()
    ovl = run_batch(deblurrer, _jobs(folder, tmp_path / "ovl"))
    assert threads and all(name.startswith("batch") for name in threads)  # SAM in a worker
    assert [(r["status"], r["masks"], r["groups"]) for r in seq] == [
        (r["status"], r["masks"], r["groups"]) for r in ovl
    ]
    from PIL import Image

    for record in seq:  # CUDA's atomic sums may differ in the last bit: 1 level at most
        name = Path(record["output"]).name
        a = np.asarray(Image.open(tmp_path / "seq" / name), dtype=np.int16)
        b = np.asarray(Image.open(tmp_path / "ovl" / name), dtype=np.int16)
        assert np.abs(a - b).max() <= 1
