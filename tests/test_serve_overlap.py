"""`serve`'s masks thread: SAM of the next waiting job beside the current job's network."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tiny_models import TinyEnv, save_photo

from sam_deblur_cli.errors import InputError
from sam_deblur_cli.imageio import read_image
from sam_deblur_cli.masks import MaskResult
from sam_deblur_cli.pipeline import Deblurrer
from sam_deblur_cli.serve.jobs import JobRequest, ServeJob, ServeSettings, Service

REQUESTS = [
    JobRequest("deblur", "segnafnet-gopro", "a.png", previews=True),
    JobRequest("masks", "segnafnet-gopro", "b.png", format="overlay"),
    JobRequest("deblur", "nafnet-gopro", "c.png", tlc=False),
    JobRequest("deblur", "segnafnet-gopro", "d.png", format="png"),
]


@pytest.fixture
def photos(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "photos"
    folder.mkdir()
    names = ("astronaut", "chelsea", "coffee", "rocket")
    return [save_photo(folder / f"{name}.png", name) for name in names]


@pytest.fixture
def services(tiny_env: TinyEnv, tmp_path: Path) -> Iterator[Any]:
    """``start(beside)``: a ready Service on the CPU (closed, temp folder checked after)."""
    opened: list[Service] = []

    def start(beside: bool | None) -> Service:
        settings = ServeSettings(device="cpu", temp_parent=tmp_path, masks_beside_network=beside)
        service = Service(settings)
        opened.append(service)
        assert service.ready.wait(60), service.load_error
        return service

    yield start
    for service in opened:
        service.close()
        assert not service.temp_root.exists()


def _submit(service: Service, request: JobRequest, photo: Path) -> ServeJob:
    folder = service.new_folder()
    src = shutil.copy(photo, folder / "upload.png")
    return service.submit(request, folder, read_image(src))


def _made_ahead(job: ServeJob, timeout: float = 60) -> MaskResult:
    """The masks the masks thread makes for ``job`` (it claims the job soon after submit)."""
    deadline = time.monotonic() + timeout
    while job.ahead is None:
        assert time.monotonic() < deadline, "the masks thread never took the job"
        time.sleep(0.01)
    return job.ahead.result(timeout=timeout)


def _mask_threads(monkeypatch: pytest.MonkeyPatch, fail: bool = False) -> list[str]:
    names: list[str] = []
    real = Deblurrer.compute_masks

    def compute_masks(self: Deblurrer, rgb: np.ndarray) -> MaskResult:
        names.append(threading.current_thread().name)
        if fail:
            raise InputError("SAM could not read this photo")
        return real(self, rgb)

    monkeypatch.setattr(Deblurrer, "compute_masks", compute_masks)
    return names


def test_masks_made_beside_a_busy_device_give_the_same_results(
    services: Any, photos: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    threads = _mask_threads(monkeypatch)
    results = {}
    for beside in (False, True):
        service = services(beside)
        threads.clear()
        with service.device_lock:  # the device is busy: every job waits
            jobs = [_submit(service, r, p) for r, p in zip(REQUESTS, photos, strict=True)]
            if beside:  # the first job's masks are made while it waits
                assert isinstance(_made_ahead(jobs[0]), MaskResult)
                assert jobs[0].state == "queued" and len(threads) == 1
        for job in jobs:
            assert job.done.wait(60) and job.state == "done", job.error
        results[beside] = [(dict(job.outputs), job.info) for job in jobs]
        ahead = [job.ahead is not None for job in jobs]
        assert ahead[0] == beside and not ahead[2]  # the plain model's job needs none
        if not beside:
            assert threads == ["sam-deblur-worker"] * 3
        else:  # a job the worker takes before the masks thread does gets its masks there
            assert threads.count("sam-deblur-masks") == sum(ahead) >= 1
            assert len(threads) == 3
    assert results[True] == results[False]


def test_on_the_cpu_the_worker_makes_the_masks_by_default(
    services: Any, photos: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    threads = _mask_threads(monkeypatch)
    service = services(None)
    job = _submit(service, REQUESTS[0], photos[0])
    assert job.done.wait(60) and job.state == "done" and job.ahead is None
    assert threads == ["sam-deblur-worker"]


def test_a_job_cancelled_after_its_masks_were_made_ahead_ends_cancelled(
    services: Any, photos: list[Path]
) -> None:
    service = services(True)
    with service.device_lock:
        first = _submit(service, REQUESTS[0], photos[0])
        second = _submit(service, REQUESTS[3], photos[1])
        assert isinstance(_made_ahead(first), MaskResult)
        service.cancel(first)
        assert isinstance(_made_ahead(second), MaskResult)  # the next one's turn
    assert first.done.wait(60) and first.state == "cancelled" and not first.outputs
    assert second.done.wait(60) and second.state == "done"
    service.close()
    assert not service.temp_root.exists()


def test_masks_that_fail_ahead_fail_their_job_as_when_made_in_turn(
    services: Any, photos: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _mask_threads(monkeypatch, fail=True)
    outcomes = {}
    for beside in (False, True):
        service = services(beside)
        with service.device_lock:
            job = _submit(service, REQUESTS[0], photos[0])
            plain = _submit(service, REQUESTS[2], photos[2])
        assert job.done.wait(60) and plain.done.wait(60)
        outcomes[beside] = (job.state, job.http_status, job.error, plain.state)
    assert outcomes[True] == outcomes[False]
    assert outcomes[True][:2] == ("failed", 422) and outcomes[True][3] == "done"
    assert "SAM could not read this photo" in str(outcomes[True][2])
