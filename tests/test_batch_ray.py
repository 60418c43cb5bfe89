"""`batch --engine ray`: the local batch's outputs, failures, resume and records on Ray.

One local Ray instance for the module (2 CPUs, one logical GPU, a small object store, no
dashboard). Its workers find the tiny SAM architecture through a sitecustomize on their
PYTHONPATH; the runner forwards SAM_DEBLUR_WEIGHTS / SAM_DEBLUR_HOME to its actors.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tiny_models import TESTS_DIR, TinyEnv, run_cli, save_photo, tree_hashes

from sam_deblur_cli.amg import RecipeOverrides
from sam_deblur_cli.batch.local import BatchCallbacks
from sam_deblur_cli.batch.plan import plan_batch, plan_path_list
from sam_deblur_cli.batch.ray import RayOptions, pool_size, run_batch_ray
from sam_deblur_cli.errors import UsageError
from sam_deblur_cli.pipeline import DeblurSettings, FileOptions

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

PLAIN = DeblurSettings(recipe=RecipeOverrides(model="nafnet-gopro"), tlc=False, device="cpu")
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


def test_ray_batch_matches_the_local_batch_and_resumes(
    tiny_env: TinyEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _photos(tmp_path / "in")
    args = ["-r", "--device", "cpu", "--json"]  # the default MAP model: SAM masks in the actors
    code, out, err = run_cli(capsys, "batch", src, "-o", tmp_path / "local", *args)
    assert code == 1, err
    local = [json.loads(line) for line in out.splitlines()]
    ray_args = ["--engine", "ray", "--workers", "1-2", "--gpus-per-worker", "0"]
    code, out, err = run_cli(capsys, "batch", src, "-o", tmp_path / "ray", *args, *ray_args)
    assert code == 1, err
    assert "1 of 5 inputs failed" in err or "1 of 5" in err, err
    records = [json.loads(line) for line in out.splitlines()]
    order = sorted(range(len(records)), key=lambda i: records[i]["input"])
    records = [records[i] for i in order]
    assert _report(records, src) == _report(local, src)
    assert [r["status"] for r in records].count("failed") == 1
    local_hashes = {
        p.relative_to(tmp_path / "local"): h for p, h in tree_hashes(tmp_path / "local").items()
    }
    before = tree_hashes(tmp_path / "ray")
    ray_hashes = {p.relative_to(tmp_path / "ray"): h for p, h in before.items()}
    assert ray_hashes == local_hashes and len(ray_hashes) == 4
    for mine, theirs in zip(records, local, strict=True):
        assert _without_times(mine) == {
            **_without_times(theirs),
            "output": mine["output"],  # the same name, under the other output folder
        }
    # A second run skips everything that was done, without starting a pool (the broken
    # file would be tried again, as the local batch does).
    done = [
        job
        for job in plan_batch(src, tmp_path / "ray", recursive=True)
        if job.src.name != "broken.jpg"
    ]
    again = run_batch_ray(DeblurSettings(device="cpu"), done, ray_options=ONE_CPU)
    assert [(r["status"], r["model"], r["device"]) for r in again] == [
        ("skipped", "segnafnet-gopro", "cpu")
    ] * 4
    assert tree_hashes(tmp_path / "ray") == before


def test_a_killed_worker_is_restarted_and_the_job_completes(
    tiny_env: TinyEnv, tmp_path: Path
) -> None:
    src = tmp_path / "in"
    for index in range(6):
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
    assert [r["status"] for r in records] == ["ok"] * 6
    assert all((tmp_path / "out" / f"p{i}.png").is_file() for i in range(6))
    assert {entry["pid"] for entry in log} - set(killed), "no restarted actor did any job"
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_a_path_list_runs_on_the_reserved_gpu(tiny_env: TinyEnv, tmp_path: Path) -> None:
    src = _photos(tmp_path / "in")
    listing = tmp_path / "paths.txt"
    listing.write_text(f"# a comment\ny/a.png\n\n{src / 'y' / 'z' / 'b.jpg'}\nx/missing.png\n")
    jobs = plan_path_list(src, tmp_path / "out", listing)
    log: list[dict[str, Any]] = []
    records = run_batch_ray(
        PLAIN, jobs, ray_options=RayOptions(workers=1, gpus_per_worker=1), worker_log=log
    )
    out = tmp_path / "out"
    assert [(r["status"], Path(r["output"]).relative_to(out).as_posix()) for r in records] == [
        ("ok", "y/a.png"),
        ("ok", "y/z/b.jpg"),
        ("failed", "x/missing.png"),
    ]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "y/a.png",
        "y/z/b.jpg",
    ]
    # The actor held the one logical GPU (the work itself ran on the CPU: --device cpu).
    assert {tuple(entry["gpu_ids"]) for entry in log} == {("0",)}
    # Two whole-GPU actors cannot fit one GPU: refused up front, not a hang.
    with pytest.raises(UsageError, match="do not fit"):
        run_batch_ray(
            PLAIN,
            jobs,
            FileOptions(overwrite=True),
            ray_options=RayOptions(workers=2, gpus_per_worker=1),
        )
    outside = tmp_path / "elsewhere.txt"
    outside.write_text(str(listing) + "\n")
    with pytest.raises(UsageError, match="not inside"):
        plan_path_list(src, tmp_path / "out", outside)


def test_pool_size_fits_the_node() -> None:
    small = {"CPU": 2.0, "GPU": 1.0}
    assert pool_size(small, RayOptions(), jobs=10) == (1, 1, 1.0, 1.0)
    assert pool_size(small, RayOptions(gpus_per_worker=0.5), jobs=10) == (1, 2, 1.0, 0.5)
    assert pool_size({"CPU": 2.0}, RayOptions(), jobs=10) == (1, 2, 1.0, 0.0)
    assert pool_size({"CPU": 2.0}, RayOptions(), jobs=1) == (1, 1, 1.0, 0.0)
    assert pool_size({"CPU": 2.0}, RayOptions(workers=(1, 8)), jobs=3) == (1, 3, 1.0, 0.0)
    with pytest.raises(UsageError, match="do not fit"):
        pool_size({"CPU": 2.0}, RayOptions(workers=3), jobs=10)


def test_cli_refuses_bad_engine_options(
    tiny_env: TinyEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    save_photo(tmp_path / "in" / "a.png")
    base = ["batch", tmp_path / "in", "-o", tmp_path / "out", "--device", "cpu"]
    for extra, said in [
        (["--engine", "ray", "--workers", "0"], "--workers"),
        (["--engine", "ray", "--workers", "3-1"], "MIN <= MAX"),
        (["--engine", "spark"], "Unknown engine"),
        (["--workers", "2"], "apply to --engine ray"),
    ]:
        code, _, err = run_cli(capsys, *base, *extra)
        assert code == 2 and said in err, (extra, err)
    assert not (tmp_path / "out").exists()


def test_videos_in_a_ray_batch_run_here_and_photos_on_ray(
    tiny_env: TinyEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ray's actors deblur photos; a video of the same folder goes to the local video engine."""
    from video_clips import blurred_frames, decoded, make_clip

    src = tmp_path / "in"
    save_photo(src / "a.png", "astronaut")
    make_clip(src / "clip.mp4", blurred_frames(4), audio=False)
    args = ["-m", "nafnet-gopro", "--no-tlc", "--device", "cpu", "--json"]
    code, out, err = run_cli(
        capsys, "batch", src, "-o", tmp_path / "out", *args, "--engine", "ray", "--workers", "1"
    )
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert sorted((Path(r["input"]).name, r["status"]) for r in records) == [
        ("a.png", "ok"),
        ("clip.mp4", "ok"),
    ]
    assert (tmp_path / "out" / "a.png").is_file()
    stamps, frames, _ = decoded(tmp_path / "out" / "clip.mp4")
    assert len(frames) == 4 and stamps == decoded(src / "clip.mp4")[0]


# --------------------------------------------------------------------------- object stores


@dataclass
class Bucket:
    """A fresh bucket on the loopback S3 server, with the AWS_* variables pointing at it."""

    name: str
    fs: Any  # pyarrow S3FileSystem

    def uri(self, key: str = "") -> str:
        return f"s3://{self.name}/{key}".rstrip("/")

    def put_tree(self, folder: Path, prefix: str) -> None:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            with self.fs.open_output_stream(
                f"{self.name}/{prefix}/{path.relative_to(folder).as_posix()}"
            ) as out:
                out.write(path.read_bytes())

    def hashes(self, prefix: str) -> dict[str, str]:
        """sha256 of every object under ``prefix``, by key relative to it."""
        from pyarrow import fs as pafs

        base = f"{self.name}/{prefix}"
        found = self.fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        hashes = {}
        for info in found:
            if info.type == pafs.FileType.File:
                with self.fs.open_input_stream(info.path) as stream:
                    data = stream.read()
                hashes[info.path[len(base) + 1 :]] = hashlib.sha256(data).hexdigest()
        return hashes


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def bucket(
    s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Bucket:
    from pyarrow import fs as pafs

    for name, value in [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ENDPOINT_URL", s3_endpoint),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]:
        monkeypatch.setenv(name, value)
    name = request.node.name.replace("_", "-")[:40].strip("-")
    fs = pafs.FileSystem.from_uri(f"s3://{name}?allow_bucket_creation=true")[0]
    fs.create_dir(name)
    return Bucket(name, fs)


def test_a_ray_batch_from_s3_to_s3_matches_the_local_batch_and_resumes(
    tiny_env: TinyEnv, tmp_path: Path, bucket: Bucket, capsys: pytest.CaptureFixture[str]
) -> None:
    from sam_deblur_cli.batch.stores import plan_store_batch

    src = _photos(tmp_path / "in")
    (src / ".hidden.png").write_bytes(b"not listed, here or there")
    bucket.put_tree(src, "in")
    args = ["-r", "--device", "cpu", "--overlay", "--json"]
    code, out, err = run_cli(capsys, "batch", src, "-o", tmp_path / "local", *args)
    assert code == 1, err
    local = [json.loads(line) for line in out.splitlines()]
    # Without Ray: one line saying what to add, nothing written.
    code, _, err = run_cli(capsys, "batch", bucket.uri("in"), "-o", tmp_path / "x", *args)
    assert code == 2 and "need --engine ray" in err, err
    ray_args = ["--engine", "ray", "--workers", "1", "--gpus-per-worker", "0"]
    code, out, err = run_cli(
        capsys, "batch", bucket.uri("in/"), "-o", bucket.uri("in/out"), *args, *ray_args
    )
    assert code == 1, err
    assert "1 of 5" in err, err
    records = sorted((json.loads(line) for line in out.splitlines()), key=lambda r: r["input"])
    assert [r["input"] for r in records] == [
        bucket.uri(f"in/{r}") for r in _report_keys(local, src)
    ]
    for mine, theirs in zip(records, local, strict=True):
        rel = Path(theirs["input"]).relative_to(src).as_posix()
        assert mine["output"] == bucket.uri(f"in/out/{rel}")
        expected = {**_without_times(theirs), "input": mine["input"], "output": mine["output"]}
        if theirs["status"] == "failed":
            # The error names the object, not the worker's staged copy.
            expected["error"] = theirs["error"].replace(str(src), bucket.uri("in"))
            assert "s3://" in mine["error"] and "/tmp" not in mine["error"], mine["error"]
        else:
            overlay = Path(theirs["overlay"]).relative_to(tmp_path / "local").as_posix()
            expected["overlay"] = bucket.uri(f"in/out/{overlay}")
        assert _without_times(mine) == expected
    objects = bucket.hashes("in/out")
    local_hashes = {
        p.relative_to(tmp_path / "local").as_posix(): h
        for p, h in tree_hashes(tmp_path / "local").items()
    }
    assert objects == local_hashes and len(objects) == 8  # 4 outputs, 4 overlays
    # A second run finds every finished output in one listing and starts no pool.
    jobs = plan_store_batch(bucket.uri("in"), bucket.uri("in/out"), recursive=True)
    assert len(jobs) == 5  # in/out/ and the hidden object are not inputs
    done = [job for job in jobs if not job.src.endswith("broken.jpg")]
    again = run_batch_ray(DeblurSettings(device="cpu"), done, ray_options=ONE_CPU)
    assert [r["status"] for r in again] == ["skipped"] * 4
    assert [r["output"] for r in again] == [job.dst for job in done]
    assert bucket.hashes("in/out") == objects


def _report_keys(records: list[dict[str, Any]], root: Path) -> list[str]:
    return [Path(r["input"]).relative_to(root).as_posix() for r in records]


def test_a_path_list_from_s3_to_a_local_folder(
    tiny_env: TinyEnv, tmp_path: Path, bucket: Bucket
) -> None:
    from sam_deblur_cli.batch.local import run_batch
    from sam_deblur_cli.batch.stores import plan_store_batch
    from sam_deblur_cli.pipeline import Deblurrer

    src = _photos(tmp_path / "in")
    bucket.put_tree(src, "photos")
    listing = tmp_path / "paths.txt"
    listing.write_text(f"y/a.png\n{bucket.uri('photos/y/z/b.jpg')}\nx/missing.png\n")
    out = tmp_path / "out"
    jobs = plan_store_batch(bucket.uri("photos"), str(out), paths_from=listing, format="png")
    records = run_batch_ray(PLAIN, jobs, ray_options=ONE_CPU)
    assert [(r["input"], r["status"], r["output"]) for r in records] == [
        (bucket.uri("photos/y/a.png"), "ok", str(out / "y" / "a.png")),
        (bucket.uri("photos/y/z/b.jpg"), "ok", str(out / "y" / "z" / "b.png")),
        (bucket.uri("photos/x/missing.png"), "failed", str(out / "x" / "missing.png")),
    ]
    assert (
        records[2]["error"]
        == f"{bucket.uri('photos/x/missing.png')} does not exist; check the name."
    )
    # The same files deblurred here, from disk, are the same bytes.
    here = plan_batch(src / "y", tmp_path / "here", recursive=True, format="png")
    run_batch(Deblurrer(PLAIN), here, options=FileOptions(format="png"))
    assert {p.relative_to(out / "y"): h for p, h in tree_hashes(out).items()} == {
        p.relative_to(tmp_path / "here"): h for p, h in tree_hashes(tmp_path / "here").items()
    }
    # An output in the store from local files, then resumed: one listing says it exists.
    up = plan_store_batch(str(src / "y"), bucket.uri("up"), format="png")
    assert [(Path(j.src).name, j.dst) for j in up] == [("a.png", bucket.uri("up/a.png"))]
    assert [r["status"] for r in run_batch_ray(PLAIN, up, ray_options=ONE_CPU)] == ["ok"]
    assert [r["status"] for r in run_batch_ray(PLAIN, up, ray_options=ONE_CPU)] == ["skipped"]
    assert bucket.hashes("up") == {"a.png": tree_hashes(out)[out / "y" / "a.png"]}


def test_store_plans_keep_the_folder_rules(tmp_path: Path, bucket: Bucket) -> None:
    from sam_deblur_cli.batch.stores import plan_store_batch

    def put(*keys: str) -> None:
        for key in keys:
            with bucket.fs.open_output_stream(f"{bucket.name}/in/{key}") as out:
                out.write(b"x")

    put("a.png", "a.jpg", "notes.txt", "sub/b.webp", ".cache/c.png", "sub/._d.png")
    jobs = plan_store_batch(bucket.uri("in"), bucket.uri("out"), format="png")
    assert [(j.src, j.dst) for j in jobs] == [
        (bucket.uri("in/a.jpg"), bucket.uri("out/a_jpg.png")),
        (bucket.uri("in/a.png"), bucket.uri("out/a_png.png")),
    ]
    deep = plan_store_batch(bucket.uri("in"), bucket.uri("out"), recursive=True)
    assert [j.dst for j in deep][2:] == [bucket.uri("out/sub/b.webp")]
    # An output prefix inside the input one is not listed as input.
    inside = plan_store_batch(bucket.uri("in/"), bucket.uri("in/sub"), recursive=True)
    assert [j.src for j in inside] == [bucket.uri("in/a.jpg"), bucket.uri("in/a.png")]
    for args, said in [
        ((bucket.uri("in"), bucket.uri("in/")), "is the input"),
        ((bucket.uri("nothing"), bucket.uri("out")), "holds no objects"),
        (("hdfs://host/in", bucket.uri("out")), "not an s3:// or gs://"),
        (("s3://", bucket.uri("out")), "names no bucket"),
        ((bucket.uri("in") + "?region=x", bucket.uri("out")), "environment"),
    ]:
        with pytest.raises(UsageError, match=said):
            plan_store_batch(*args)
    listing = tmp_path / "paths.txt"
    for line in ["../elsewhere.png", "/abs/a.png", "s3://other/in/a.png"]:
        listing.write_text(line + "\n")
        with pytest.raises(UsageError, match="not inside"):
            plan_store_batch(bucket.uri("in"), bucket.uri("out"), paths_from=listing)
    put("A.PNG")  # the same output name as a.png after the renaming rule: refused, as here
    with pytest.raises(UsageError, match="would both be written"):
        plan_store_batch(bucket.uri("in"), bucket.uri("out"), format="png")
    put("clip.mp4")
    with pytest.raises(UsageError, match="is a video"):
        plan_store_batch(bucket.uri("in"), bucket.uri("out"))
