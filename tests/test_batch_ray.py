"""`batch --engine ray`: the local batch's outputs, failures, resume and records on Ray.

One local Ray instance for the module (2 CPUs, one logical GPU, a small object store, no
dashboard). Its workers find the tiny SAM architecture through a sitecustomize on their
PYTHONPATH; the runner forwards SAM_DEBLUR_WEIGHTS / SAM_DEBLUR_HOME to its actors.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tiny_models import TESTS_DIR, TinyEnv, run_cli, save_photo, tree_hashes

from sam_deblur_cli.batch.local import BatchCallbacks, run_batch
from sam_deblur_cli.batch.plan import plan_batch, plan_path_list
from sam_deblur_cli.batch.ray import RayOptions, pool_size, run_batch_ray
from sam_deblur_cli.errors import UsageError
from sam_deblur_cli.pipeline import Deblurrer, DeblurSettings, FileOptions

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

PLAIN = DeblurSettings(model="nafnet-gopro", tlc=False, device="cpu")
ONE_CPU = RayOptions(workers=1, gpus_per_worker=0)


@pytest.fixture(scope="module", autouse=True)
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    site = tmp_path_factory.mktemp("ray-site")
    (site / "sitecustomize.py").write_text(
        "from tiny_sam import register_tiny_sam\nregister_tiny_sam()\n"
    )
    path = os.pathsep.join([str(site), str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])
    ray.init(
        num_cpus=2,
        num_gpus=1,
        object_store_memory=100 * 1024 * 1024,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": path.rstrip(os.pathsep)}},
    )
    yield
    ray.shutdown()


def _photos(root: Path) -> Path:
    """A tree with sub-folders, the same name in two folders and one broken file."""
    for name, photo in [
        ("a.png", "astronaut"),
        ("x/a.png", "chelsea"),
        ("y/a.png", "coffee"),
        ("y/z/b.jpg", "astronaut"),
    ]:
        save_photo(root / name, photo)
    (root / "x" / "broken.jpg").write_bytes(b"These are my holiday notes, not a photo.\n" * 20)
    return root


def _report(records: list[dict[str, Any]], root: Path) -> list[tuple[str, str, str | None]]:
    return [
        (Path(r["input"]).relative_to(root).as_posix(), r["status"], r["error"]) for r in records
    ]


def _without_times(record: dict[str, Any]) -> dict[str, Any]:
    return {**record, "seconds": sorted(record["seconds"])}


def test_ray_batch_matches_the_local_batch_and_resumes(tiny_env: TinyEnv, tmp_path: Path) -> None:
    src = _photos(tmp_path / "in")
    settings = DeblurSettings(device="cpu")  # the default MAP model: SAM masks in the actors
    local_jobs = plan_batch(src, tmp_path / "local", recursive=True)
    local = run_batch(Deblurrer(settings), local_jobs)
    ray_jobs = plan_batch(src, tmp_path / "ray", recursive=True)
    seen: list[str] = []
    records = run_batch_ray(
        settings,
        ray_jobs,
        ray_options=RayOptions(workers=2, gpus_per_worker=0),
        callbacks=BatchCallbacks(on_done=lambda job, record: seen.append(record["status"])),
    )
    assert _report(records, src) == _report(local, src)
    assert [r["status"] for r in records].count("failed") == 1
    assert sorted(seen) == sorted(r["status"] for r in records)
    local_hashes = {
        p.relative_to(tmp_path / "local"): h for p, h in tree_hashes(tmp_path / "local").items()
    }
    ray_hashes = {
        p.relative_to(tmp_path / "ray"): h for p, h in tree_hashes(tmp_path / "ray").items()
    }
    assert ray_hashes == local_hashes and len(ray_hashes) == 4
    for mine, theirs in zip(records, local, strict=True):
        assert _without_times(mine) == {
            **_without_times(theirs),
            "output": mine["output"],  # the same name, under the other output folder
        }
    before = tree_hashes(tmp_path / "ray")
    # Nothing left to do: every record is skipped, without starting a pool.
    done = [job for job in ray_jobs if job.src.name != "broken.jpg"]
    again = run_batch_ray(settings, done, ray_options=ONE_CPU)
    assert [(r["status"], r["model"], r["device"]) for r in again] == [
        ("skipped", "segnafnet-gopro", "cpu")
    ] * 4
    # The whole plan again: the broken file fails again, the rest is skipped.
    again = run_batch_ray(settings, ray_jobs, ray_options=ONE_CPU)
    assert [r["status"] for r in again] == ["skipped", "skipped", "failed", "skipped", "skipped"]
    assert tree_hashes(tmp_path / "ray") == before


def test_a_killed_worker_is_restarted_and_the_job_completes(
    tiny_env: TinyEnv, tmp_path: Path
) -> None:
    src = tmp_path / "in"
    for index in range(10):
        save_photo(src / f"p{index}.png", ("astronaut", "chelsea", "coffee")[index % 3])
    jobs = plan_batch(src, tmp_path / "out")
    log: list[dict[str, Any]] = []
    killed: list[int] = []

    def kill_once(job: Any, record: Any) -> None:
        if not killed:
            killed.append(log[-1]["pid"])
            os.kill(killed[0], signal.SIGKILL)

    records = run_batch_ray(
        PLAIN,
        jobs,
        ray_options=ONE_CPU,
        callbacks=BatchCallbacks(on_done=kill_once),
        worker_log=log,
    )
    assert [r["status"] for r in records] == ["ok"] * 10
    assert all((tmp_path / "out" / f"p{i}.png").is_file() for i in range(10))
    assert {entry["pid"] for entry in log} - set(killed), "no restarted actor did any job"
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_a_path_list_runs_the_listed_images_mirrored(tiny_env: TinyEnv, tmp_path: Path) -> None:
    src = _photos(tmp_path / "in")
    listing = tmp_path / "paths.txt"
    listing.write_text(f"# a comment\ny/a.png\n\n{src / 'y' / 'z' / 'b.jpg'}\nx/missing.png\n")
    jobs = plan_path_list(src, tmp_path / "out", listing)
    records = run_batch_ray(PLAIN, jobs, ray_options=ONE_CPU)
    assert [
        (r["status"], Path(r["output"]).relative_to(tmp_path / "out").as_posix()) for r in records
    ] == [
        ("ok", "y/a.png"),
        ("ok", "y/z/b.jpg"),
        ("failed", "x/missing.png"),
    ]
    outside = tmp_path / "elsewhere.txt"
    outside.write_text(str(tmp_path / "paths.txt") + "\n")
    with pytest.raises(UsageError, match="not inside"):
        plan_path_list(src, tmp_path / "out", outside)


def test_the_gpu_reservation_is_honoured(tiny_env: TinyEnv, tmp_path: Path) -> None:
    src = tmp_path / "in"
    save_photo(src / "a.png")
    save_photo(src / "b.png", "chelsea")
    log: list[dict[str, Any]] = []
    records = run_batch_ray(
        PLAIN,
        plan_batch(src, tmp_path / "out"),
        ray_options=RayOptions(workers=1, gpus_per_worker=1),
        worker_log=log,
    )
    assert [r["status"] for r in records] == ["ok", "ok"]
    assert {tuple(entry["gpu_ids"]) for entry in log} == {("0",)}  # the one logical GPU
    # Two whole-GPU actors cannot fit one GPU: refused up front, not a hang.
    with pytest.raises(UsageError, match="do not fit"):
        run_batch_ray(
            PLAIN,
            plan_batch(src, tmp_path / "again"),
            FileOptions(overwrite=True),
            ray_options=RayOptions(workers=2, gpus_per_worker=1),
        )


def test_pool_size_fits_the_node() -> None:
    small = {"CPU": 2.0, "GPU": 1.0}
    assert pool_size(small, RayOptions(), jobs=10) == (1, 1, 1.0, 1.0)
    assert pool_size(small, RayOptions(gpus_per_worker=0.5), jobs=10) == (1, 2, 1.0, 0.5)
    assert pool_size({"CPU": 2.0}, RayOptions(), jobs=10) == (1, 2, 1.0, 0.0)
    assert pool_size({"CPU": 2.0}, RayOptions(), jobs=1) == (1, 1, 1.0, 0.0)
    assert pool_size({"CPU": 2.0}, RayOptions(workers=(1, 8)), jobs=3) == (1, 3, 1.0, 0.0)
    with pytest.raises(UsageError, match="do not fit"):
        pool_size({"CPU": 2.0}, RayOptions(workers=3), jobs=10)


def test_cli_engine_ray_reports_like_the_local_batch(
    tiny_env: TinyEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _photos(tmp_path / "in")
    args = ["--model", "nafnet-gopro", "--no-tlc", "--device", "cpu", "-r", "--json"]
    code, out, err = run_cli(capsys, "batch", src, "-o", tmp_path / "local", *args)
    assert code == 1, err
    local = [json.loads(line) for line in out.splitlines()]
    code, out, err = run_cli(
        capsys,
        "batch",
        src,
        "-o",
        tmp_path / "ray",
        *args,
        "--engine",
        "ray",
        "--workers",
        "1-2",
        "--gpus-per-worker",
        "0",
    )
    assert code == 1, err
    mine = [json.loads(line) for line in out.splitlines()]
    assert sorted(_report(mine, src)) == sorted(_report(local, src))
    assert "1 of 5" in err or "1/5" in err or "failed" in err
    code, out, err = run_cli(
        capsys, "batch", src, "-o", tmp_path / "ray", *args, "--engine", "ray", "--workers", "0"
    )
    assert code == 2 and "--workers" in err
