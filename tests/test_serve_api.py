"""`sam-deblur serve`'s HTTP API against the tiny real models: the CLI's pixels, clear refusals.

The app runs in-process under Starlette's TestClient (httpx); each test gets its own service
whose private temp folder sits in ``tmp_path``, and checks that it is empty afterwards.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from tiny_models import TinyEnv, TinyEnvFactory, run_cli, save_photo, write_special_photos

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
from fastapi.testclient import TestClient

from sam_deblur_cli.serve.app import create_app
from sam_deblur_cli.serve.jobs import ServeSettings, Service

Client = tuple[TestClient, Service]


@pytest.fixture(name="serve")
def serve_fixture(tiny_env: TinyEnv, tmp_path: Path) -> Iterator[Callable[..., Client]]:
    """``serve(**settings)``: a ready client and its service (closed, temp folder checked)."""
    opened: list[tuple[TestClient, Service]] = []

    def start(**overrides: Any) -> Client:
        settings = ServeSettings(device="cpu", temp_parent=tmp_path, **overrides)
        service = Service(settings)
        app = create_app(settings, service)
        client = TestClient(app, base_url="http://localhost").__enter__()
        opened.append((client, service))
        assert service.ready.wait(60), service.load_error
        return client, service

    yield start
    for client, service in opened:
        assert list(service.temp_root.iterdir()) == []  # every upload was removed
        client.__exit__(None, None, None)
        assert not service.temp_root.exists()


def _upload(path: Path, name: str | None = None) -> dict[str, Any]:
    return {"file": (name or path.name, path.read_bytes(), "application/octet-stream")}


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def _wait(client: TestClient, job_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get(f"/api/jobs/{job_id}").json()
        if status["state"] not in ("queued", "running"):
            return status
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


def test_deblur_returns_the_cli_pixels_and_metadata(
    serve: Callable[..., Client], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photo = write_special_photos(tmp_path / "in")["exif_rotated"]  # JPEG, orientation 6, ICC
    cli_out = tmp_path / "cli.jpg"
    code, _, err = run_cli(capsys, photo, "-o", cli_out, "--no-tlc", "--device", "cpu")
    assert code == 0, err
    client, _ = serve()
    answer = client.post(
        "/api/deblur", files=_upload(photo, "../../etc/My Photo.JPG"), data={"tlc": "false"}
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "image/jpeg"
    assert 'filename="My_Photo_deblurred.jpg"' in answer.headers["content-disposition"]
    assert np.array_equal(_pixels(answer.content), _pixels(cli_out.read_bytes()))
    with Image.open(io.BytesIO(answer.content)) as served, Image.open(cli_out) as made:
        assert served.size == made.size == (64, 48)
        assert served.info.get("icc_profile") == made.info.get("icc_profile") is not None
        assert served.getexif().get(0x0112, 1) == 1
    as_png = client.post(
        "/api/deblur", files=_upload(photo), data={"tlc": "false", "format": "png"}
    )
    assert as_png.headers["content-type"] == "image/png"
    assert _pixels(as_png.content).shape == (48, 64, 3)


def test_masks_endpoint_returns_the_masks_command_segmask(
    serve: Callable[..., Client], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photo = save_photo(tmp_path / "cat.png", "chelsea")
    code, _, err = run_cli(capsys, "masks", photo, "-o", tmp_path / "m", "--device", "cpu")
    assert code == 0, err
    client, _ = serve()
    segmask = client.post("/api/masks", files=_upload(photo))
    assert segmask.status_code == 200, segmask.text
    expected = _pixels((tmp_path / "m" / "cat_segmask.png").read_bytes())
    assert np.array_equal(_pixels(segmask.content), expected)
    overlay = client.post("/api/masks", files=_upload(photo), data={"format": "overlay"})
    assert np.array_equal(
        _pixels(overlay.content), _pixels((tmp_path / "m" / "cat_overlay.png").read_bytes())
    )
    plain = client.post("/api/masks", files=_upload(photo), data={"model": "nafnet-gopro"})
    assert plain.status_code == 422 and "takes no masks" in plain.json()["detail"]


def test_health_models_page_and_docs(serve: Callable[..., Client]) -> None:
    client, _ = serve()
    health = client.get("/api/health").json()
    assert health["status"] == "ready" and health["device"] == "cpu"
    models = {m["name"]: m for m in client.get("/api/models").json()}
    assert set(models) == {"segnafnet-gopro", "masknafnet-gopro", "nafnet-gopro"}
    assert models["segnafnet-gopro"]["default"] and models["segnafnet-gopro"]["loaded"]
    assert not models["nafnet-gopro"]["masks"]
    page = client.get("/")
    assert page.status_code == 200 and "sam-deblur" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "cdn" not in page.text.lower() and "http" not in page.text.replace("http-equiv", "")
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/docs").status_code == 200
    assert "/api/deblur" in client.get("/openapi.json").json()["paths"]


def test_bad_uploads_get_a_clear_4xx_without_paths_or_tracebacks(
    serve: Callable[..., Client], tmp_path: Path
) -> None:
    client, service = serve(max_upload_bytes=100_000, max_pixels=1_000_000)
    photo = save_photo(tmp_path / "a.png")
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo at all")
    bomb = tmp_path / "bomb.png"
    Image.new("L", (2000, 2000)).save(bomb)  # 4 MP in a few kB: above the 1 MP guard
    big = tmp_path / "big.bin"
    big.write_bytes(np.random.default_rng(0).bytes(150_000))
    cases = [
        (client.post("/api/deblur", files=_upload(text)), 415, "notes"),
        (client.post("/api/deblur", files=_upload(bomb)), 413, "safety limit"),
        (client.post("/api/deblur", files=_upload(big)), 413, "100000"[:0] + "MB limit"),
        (client.post("/api/deblur", files=_upload(photo), data={"model": "nope"}), 422, "'nope'"),
        (client.post("/api/deblur", files=_upload(photo), data={"format": "gif"}), 422, "gif"),
        (client.post("/api/masks", files=_upload(photo), data={"format": "npz"}), 422, "overlay"),
        (client.post("/api/deblur", data={"model": "nafnet-gopro"}), 400, "file"),
        (client.post("/api/deblur", files={"file": ("e.png", b"", "image/png")}), 400, "empty"),
        (client.get("/api/jobs/0123"), 404, "No job"),
    ]
    for answer, status, words in cases:
        assert answer.status_code == status, answer.text
        detail = answer.json()["detail"]
        assert isinstance(detail, str) and words in detail, detail
        assert str(service.temp_root) not in detail and "Traceback" not in detail
    crossed = client.post(
        "/api/deblur", files=_upload(photo), headers={"Origin": "https://evil.example"}
    )
    assert crossed.status_code == 403


def test_only_loopback_host_names_are_answered_unless_any_host_is_allowed(
    serve: Callable[..., Client],
) -> None:
    """A page that rebinds its own name to 127.0.0.1 sends its own name as Host (and as a
    same-site Origin): refused, so the page can neither use the server nor read it."""
    client, _ = serve()
    for host in ("localhost:8000", "127.0.0.1:8000", "[::1]:8000", "LOCALHOST"):
        assert client.get("/api/health", headers={"Host": host}).status_code == 200, host
    rebound = {"Host": "evil.example:8000", "Origin": "http://evil.example:8000"}
    for answer in (
        client.get("/api/health", headers=rebound),
        client.get("/", headers=rebound),
        client.post("/api/deblur", headers=rebound, files={"file": ("a.png", b"x", "image/png")}),
    ):
        assert answer.status_code == 400
        assert "answers only for localhost, 127.0.0.1, ::1" in answer.json()["detail"]
    anyone, _ = serve(hosts=None)
    assert anyone.get("/api/health", headers={"Host": "evil.example:8000"}).status_code == 200


def test_a_full_queue_answers_503_and_jobs_report_progress_and_cancel(
    serve: Callable[..., Client], tmp_path: Path
) -> None:
    client, service = serve(queue_size=2)
    photo = save_photo(tmp_path / "a.png")
    form = {"tlc": "false", "model": "nafnet-gopro"}
    with service.device_lock:  # the device is busy: jobs wait
        first = client.post("/api/jobs", files=_upload(photo), data=form)
        second = client.post("/api/jobs", files=_upload(photo), data=form)
        assert (first.status_code, second.status_code) == (202, 202), first.text
        assert first.json()["state"] == "queued"
        full = client.post("/api/deblur", files=_upload(photo), data=form)
        assert full.status_code == 503 and full.headers["retry-after"] == "5"
        assert "waiting" in full.json()["detail"]
        cancelled = client.delete(f"/api/jobs/{second.json()['id']}").json()
        assert cancelled["state"] == "cancelled"
    done = _wait(client, first.json()["id"])
    assert done["state"] == "done" and set(done["outputs"]) == {"result", "before", "after"}
    job = first.json()["id"]
    result = client.get(f"/api/jobs/{job}/result")
    after = client.get(f"/api/jobs/{job}/after")
    assert np.array_equal(_pixels(result.content), _pixels(after.content))  # PNG: lossless
    assert np.array_equal(
        _pixels(client.get(f"/api/jobs/{job}/before").content), _pixels(photo.read_bytes())
    )
    assert client.get(f"/api/jobs/{job}/overlay").status_code == 404  # plain model: no masks


def test_a_waiting_job_nobody_polls_is_dropped(
    serve: Callable[..., Client], tmp_path: Path
) -> None:
    client, service = serve(abandon_after=0.2)
    photo = save_photo(tmp_path / "a.png")
    with service.device_lock:
        job = client.post("/api/jobs", files=_upload(photo), data={"model": "nafnet-gopro"}).json()
        time.sleep(0.4)
    assert service.job(job["id"]) is not None
    assert service.job(job["id"]).done.wait(10)  # type: ignore[union-attr]
    assert client.get(f"/api/jobs/{job['id']}").json()["state"] == "cancelled"


def test_a_client_that_disconnects_cancels_its_deblur_request(
    tiny_env: TinyEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under a real uvicorn server: the client sends a photo to /api/deblur and hangs up
    while the network runs; the job is cancelled and ends without a result."""
    import socket
    import threading

    uvicorn = pytest.importorskip("uvicorn", reason="the serve extra (uvicorn) is not installed")
    from sam_deblur_cli.pipeline import Deblurrer

    gate, running = threading.Event(), threading.Event()
    real = Deblurrer.deblur

    def held(self: Deblurrer, rgb: np.ndarray, masks: object = None) -> np.ndarray:
        running.set()
        gate.wait(30)
        return real(self, rgb, masks)  # type: ignore[arg-type]

    monkeypatch.setattr(Deblurrer, "deblur", held)
    settings = ServeSettings(model="nafnet-gopro", device="cpu", temp_parent=tmp_path)
    service = Service(settings)
    jobs: list[Any] = []
    submit = service.submit
    monkeypatch.setattr(service, "submit", lambda *a: jobs.append(submit(*a)) or jobs[-1])
    config = uvicorn.Config(create_app(settings, service), host="127.0.0.1", port=0)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        photo = save_photo(tmp_path / "in" / "photo.png")
        body = (
            b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="photo.png"\r\n'
            b"Content-Type: image/png\r\n\r\n" + photo.read_bytes() + b"\r\n--XyZ--\r\n"
        )
        head = (
            f"POST /api/deblur HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: multipart/form-data; boundary=XyZ\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
            client.sendall(head + body)
            assert running.wait(60), "the job never reached the network"
        [job] = jobs  # the client has hung up while its job runs
        deadline = time.monotonic() + 10
        while not job.cancelled and time.monotonic() < deadline:
            time.sleep(0.05)
        assert job.cancelled
        gate.set()
        assert job.done.wait(30)
        assert job.state == "cancelled" and job.outputs == {} and not job.folder.exists()
    finally:
        gate.set()
        server.should_exit = True
        thread.join(30)
    assert not service.temp_root.exists()


@pytest.mark.subprocess
@pytest.mark.parametrize(
    ("bind", "host_header", "status"),
    [
        ("127.0.0.1", "evil.example", 400),
        ("127.0.0.1", "localhost", 200),
        ("0.0.0.0", "box.lan", 200),
    ],
)
def test_the_serve_command_answers_other_host_names_only_when_bound_beyond_loopback(
    tiny_env: TinyEnv, bind: str, host_header: str, status: int
) -> None:
    import socket
    import subprocess
    import sys
    import urllib.error
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = ["serve", "--host", bind, "--port", str(port), "-m", "nafnet-gopro", "--device", "cpu"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "sam_deblur_cli", *argv],
        env=tiny_env.subprocess_env(tiny_sam=False),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/health", headers={"Host": f"{host_header}:{port}"}
        )
        deadline, answer = time.monotonic() + 60, None
        while answer is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(request, timeout=5) as reply:
                    answer = reply.status
            except urllib.error.HTTPError as exc:
                answer = exc.code
            except OSError:
                time.sleep(0.2)  # not listening yet
        assert answer == status, proc.stderr.read().decode() if proc.poll() is not None else ""
    finally:
        proc.terminate()
        proc.wait(30)


def test_port_0_serves_on_the_port_the_system_picked_and_says_which(tiny_env: TinyEnv) -> None:
    import re
    import subprocess
    import sys
    import urllib.request

    argv = ["serve", "--port", "0", "-m", "nafnet-gopro", "--device", "cpu"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "sam_deblur_cli", *argv],
        env={**tiny_env.subprocess_env(tiny_sam=False), "COLUMNS": "200"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        found = re.search(r"http://127\.0\.0\.1:(\d+)/", first)
        assert found and found.group(1) != "0", first
        url = f"http://127.0.0.1:{found.group(1)}/api/health"
        deadline, answer = time.monotonic() + 60, None
        while answer is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(url, timeout=5) as reply:
                    answer = reply.status
            except OSError:
                time.sleep(0.2)
        assert answer == 200
    finally:
        proc.terminate()
        proc.wait(30)


def test_a_port_in_use_is_one_line_and_exit_2_before_any_model_loads(
    tiny_env: TinyEnv, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    from sam_deblur_cli.cli import main
    from sam_deblur_cli.pipeline import Deblurrer

    def never(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(Deblurrer, "__init__", never)
    monkeypatch.setenv("COLUMNS", "200")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main(["serve", "--port", str(port), "-m", "nafnet-gopro", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [
        f"error: port {port} on 127.0.0.1 is already in use (another server, or sam-deblur "
        f"serve already running?); pick another with --port, e.g. --port {port + 1}."
    ]


def test_a_missing_default_model_leaves_the_server_degraded_and_refuses_it_at_once(
    tiny_env_factory: TinyEnvFactory, tmp_path: Path
) -> None:
    tiny_env_factory(imported=["nafnet-gopro"])  # the default segnafnet-gopro is missing
    settings = ServeSettings(device="cpu", temp_parent=tmp_path)
    service = Service(settings)
    with TestClient(create_app(settings, service), base_url="http://localhost") as client:
        deadline = time.monotonic() + 60
        while service.load_error is None and time.monotonic() < deadline:
            time.sleep(0.05)
        health = client.get("/api/health")
        assert health.status_code == 200
        assert health.json()["status"] == "degraded" and health.json()["models"] == ["nafnet-gopro"]
        assert "segnafnet-gopro is not on the Hugging Face Hub" in health.json()["error"]
        photo = save_photo(tmp_path / "a.png")
        start = time.monotonic()
        refused = client.post("/api/deblur", files=_upload(photo), data={"tlc": "false"})
        assert refused.status_code == 503 and time.monotonic() - start < 2
        assert refused.json()["detail"].startswith("segnafnet-gopro is not available: ")
        data = {"tlc": "false", "model": "nafnet-gopro"}
        assert client.post("/api/deblur", files=_upload(photo), data=data).status_code == 200
    service.close()
