"""A loopback stand-in for the Hugging Face Hub's file protocol, for tests.

Two ``ThreadingHTTPServer``s on 127.0.0.1 (ports chosen by the OS):

* the Hub: ``HEAD``/``GET /{repo}/resolve/{revision}/{path}``. Regular files answer 200 with
  ``X-Repo-Commit``, ``ETag`` (git blob id) and ``Content-Length``. LFS files answer like the
  real Hub: ``302`` to the CDN with ``X-Repo-Commit``, ``X-Linked-Etag`` (the sha256) and
  ``X-Linked-Size``. Unknown repos, revisions and files answer 404 with the Hub's
  ``X-Error-Code`` (``RepoNotFound`` / ``RevisionNotFound`` / ``EntryNotFound``).
* the CDN (another origin, so the client treats it as off-Hub): ``GET /blobs/{sha256}`` with
  ``Range: bytes=N-`` support, as huggingface_hub resumes broken downloads that way.

``hub.cut_next_get = n`` makes the next ``n`` body downloads stop after ``hub.cut_at`` bytes
(default: half the body) and drop the connection. Every request is logged in ``hub.requests``.

Tests use the ``hub`` fixture (registered by ``conftest.py`` through ``pytest_plugins``),
which also points ``HF_ENDPOINT`` at the server.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased


@dataclass
class _File:
    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def git_oid(self) -> str:
        return hashlib.sha1(b"blob %d\0" % len(self.data) + self.data).hexdigest()


@dataclass
class _Repo:
    commit: str
    files: dict[str, _File] = field(default_factory=dict)


class FakeHub:
    """The Hub and its CDN on loopback; ``endpoint`` is what HF_ENDPOINT should say."""

    def __init__(self) -> None:
        self.repos: dict[str, _Repo] = {}
        self.requests: list[Request] = []
        self.cut_next_get = 0
        self.cut_at: int | None = None
        self.stopped = False
        self._lock = threading.Lock()
        self._hub = self._serve(_HubHandler)
        self._cdn = self._serve(_CdnHandler)
        self.endpoint = f"http://127.0.0.1:{self._hub.server_address[1]}"
        self.cdn = f"http://127.0.0.1:{self._cdn.server_address[1]}"

    def _serve(self, handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        server.hub = self  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        return server

    def add_file(
        self, repo: str, path: str, data: bytes, *, commit: str = COMMIT, lfs: bool = True
    ) -> str:
        """Publish ``data`` as ``repo``/``path`` at ``commit``; returns its sha256."""
        self.repos.setdefault(repo, _Repo(commit)).files[path] = _File(data, lfs)
        return hashlib.sha256(data).hexdigest()

    def stop(self) -> None:
        """Stop both servers (idempotent): later requests get 'connection refused'."""
        if self.stopped:
            return
        self.stopped = True
        for server in (self._hub, self._cdn):
            server.shutdown()
            server.server_close()

    def gets(self) -> list[Request]:
        """The body downloads seen so far (CDN GETs and direct Hub GETs)."""
        return [r for r in self.requests if r.method == "GET"]

    def _log(self, handler: BaseHTTPRequestHandler) -> None:
        with self._lock:
            headers = {k.lower(): v for k, v in handler.headers.items()}
            self.requests.append(Request(handler.command, handler.path, headers))

    def _take_cut(self) -> bool:
        with self._lock:
            if self.cut_next_get > 0:
                self.cut_next_get -= 1
                return True
            return False

    def _blob(self, sha256: str) -> _File | None:
        for repo in self.repos.values():
            for file in repo.files.values():
                if file.lfs and file.sha256 == sha256:
                    return file
        return None


class _Handler(BaseHTTPRequestHandler):
    server: ThreadingHTTPServer

    @property
    def hub(self) -> FakeHub:
        return self.server.hub  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: tests read ``hub.requests`` instead."""

    def do_HEAD(self) -> None:
        self.hub._log(self)
        self._answer(body=False)

    def do_GET(self) -> None:
        self.hub._log(self)
        self._answer(body=True)

    def _answer(self, *, body: bool) -> None:
        raise NotImplementedError

    def _error(self, status: int, code: str, commit: str | None = None) -> None:
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", code)
        if commit is not None:
            self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _send_data(self, data: bytes, headers: dict[str, str], *, body: bool) -> None:
        """200 or 206 (``Range: bytes=N-``); may cut the body halfway when asked to."""
        start = 0
        range_header = self.headers.get("Range", "")
        if range_header.startswith("bytes="):
            start = int(range_header[len("bytes=") :].split("-", 1)[0] or 0)
        self.send_response(206 if start else 200)
        for key, value in headers.items():
            self.send_header(key, value)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        if not body:
            return
        payload = data[start:]
        if self.hub._take_cut():
            cut = self.hub.cut_at if self.hub.cut_at is not None else len(payload) // 2
            self.wfile.write(payload[:cut])
            self.wfile.flush()
            self.close_connection = True  # the client sees the body end early
            return
        self.wfile.write(payload)


class _HubHandler(_Handler):
    def _answer(self, *, body: bool) -> None:
        parts = unquote(urlsplit(self.path).path).strip("/").split("/")
        if len(parts) < 5 or parts[2] != "resolve":
            self._error(404, "RepoNotFound")
            return
        repo_id, revision, filename = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound")
        elif revision not in (repo.commit, "main"):
            self._error(404, "RevisionNotFound")
        elif filename not in repo.files:
            self._error(404, "EntryNotFound", repo.commit)
        elif repo.files[filename].lfs:
            self._redirect_to_cdn(repo, repo.files[filename])
        else:
            file = repo.files[filename]
            headers = {"X-Repo-Commit": repo.commit, "ETag": f'"{file.git_oid}"'}
            self._send_data(file.data, headers, body=body)

    def _redirect_to_cdn(self, repo: _Repo, file: _File) -> None:
        self.send_response(302)
        self.send_header("Location", f"{self.hub.cdn}/blobs/{file.sha256}")
        self.send_header("X-Repo-Commit", repo.commit)
        self.send_header("ETag", f'"{file.git_oid}"')
        self.send_header("X-Linked-Etag", f'"{file.sha256}"')
        self.send_header("X-Linked-Size", str(len(file.data)))
        self.send_header("Content-Length", "0")
        self.end_headers()


class _CdnHandler(_Handler):
    def _answer(self, *, body: bool) -> None:
        parts = urlsplit(self.path).path.strip("/").split("/")
        file = self.hub._blob(parts[-1]) if len(parts) == 2 and parts[0] == "blobs" else None
        if file is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._send_data(file.data, {"ETag": f'"{file.sha256}"'}, body=body)


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """A running FakeHub with ``HF_ENDPOINT`` pointing at it; stopped after the test."""
    server = FakeHub()
    monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
    try:
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------- a served manifest

_MANIFEST = """\
schema = 1

[recipes.r]
sam = "sam-test"
channel_order = "bgr"
amg = {{ points_per_side = 4 }}

[models.sam-test]
kind = "sam"
arch = "vit_b"
{about}
{pin_sam}
source = {{ hub = "org/sam", revision = "{commit}", file = "checkpoints/sam_vit_b_test.pth" }}

[models.tiny-plain]
kind = "deblur"
{about}
{pin_plain}
source = {{ hub = "org/nets", revision = "{commit}", file = "tiny-plain.pth" }}
net = {{ variant = "plain", {net} }}

[models.blob]
kind = "deblur"
{about}
{pin_blob}
source = {{ hub = "org/nets", revision = "{commit}", file = "blob.bin" }}
net = {{ variant = "plain", {net} }}

[models.tiny-map]
kind = "deblur"
{about}
source = {{ page = "https://example.invalid/models", file = "TinyMap.pth", note = "a drive" }}
net = {{ variant = "map", seg_channel = 2, {net} }}
recipe = "r"
tlc = true

[models.no-repo]
kind = "deblur"
{about}
{pin_blob}
source = {{ hub = "org/absent", revision = "{commit}", file = "blob.bin" }}
net = {{ variant = "plain", {net} }}

[models.no-file]
kind = "deblur"
{about}
{pin_blob}
source = {{ hub = "org/nets", revision = "{commit}", file = "absent.bin" }}
net = {{ variant = "plain", {net} }}

[models.no-revision]
kind = "deblur"
{about}
{pin_blob}
source = {{ hub = "org/nets", revision = "{other_commit}", file = "blob.bin" }}
net = {{ variant = "plain", {net} }}
"""

TINY_NET = "width = 4, enc_blk_nums = [1, 1], middle_blk_num = 1, dec_blk_nums = [1, 1]"


@dataclass
class Published:
    """Files served by ``hub`` and the manifest (``$SAM_DEBLUR_WEIGHTS``) that points at them."""

    manifest_path: Path
    files: dict[str, bytes]  # model name -> the bytes the Hub serves for it


def tiny_state_dict(variant: str = "plain", width: int = 4, seed: int = 0) -> dict[str, Any]:
    """A real NAFNet-family state dict of the tiny test architecture (random weights)."""
    import torch

    from sam_deblur_cli.nets import NetConfig, build_network

    torch.manual_seed(seed)
    cfg = NetConfig(variant=variant, width=width, enc_blk_nums=(1, 1), dec_blk_nums=(1, 1))  # type: ignore[arg-type]
    return build_network(cfg).state_dict()


def torch_bytes(obj: object) -> bytes:
    """``torch.save(obj)`` as bytes (upstream BasicSR files are ``{"params": state_dict}``)."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def fake_sam_vit_b() -> bytes:
    """A SAM ViT-B state dict with every real key and shape, but one stored value each.

    Zero-strided tensors keep the file at ~100 kB while ``load_strict`` sees the real shapes.
    """
    import torch
    from segment_anything import sam_model_registry

    with torch.device("meta"):
        sam = sam_model_registry["vit_b"](checkpoint=None)
    state = {k: torch.zeros((), dtype=v.dtype).expand(v.shape) for k, v in sam.state_dict().items()}
    return torch_bytes(state)


def _pin(data: bytes) -> str:
    return f'sha256 = "{hashlib.sha256(data).hexdigest()}"\nsize = {len(data)}'


@pytest.fixture
def published(hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Published:
    """A test manifest (``$SAM_DEBLUR_WEIGHTS``) whose Hub entries ``hub`` serves.

    sam-test (SAM ViT-B shapes), tiny-plain (a tiny NAFNet in upstream format), blob (12 MB
    of noise: more than huggingface_hub's 10 MB write chunk, so a download can resume
    mid-file), tiny-map (drive-hosted: no sha256 until imported) and three broken sources:
    no-repo, no-file, no-revision.
    """
    files = {
        "sam-test": fake_sam_vit_b(),
        "tiny-plain": torch_bytes({"params": tiny_state_dict("plain")}),
        "blob": os.urandom(12_000_000),
    }
    hub.add_file("org/sam", "checkpoints/sam_vit_b_test.pth", files["sam-test"])
    hub.add_file("org/nets", "tiny-plain.pth", files["tiny-plain"])
    hub.add_file("org/nets", "blob.bin", files["blob"])
    text = _MANIFEST.format(
        about='license = "MIT"\nhomepage = "https://example.invalid"',
        pin_sam=_pin(files["sam-test"]),
        pin_plain=_pin(files["tiny-plain"]),
        pin_blob=_pin(files["blob"]),
        commit=COMMIT,
        other_commit="f" * 40,
        net=TINY_NET,
    )
    path = tmp_path / "weights.toml"
    path.write_text(text, encoding="utf-8")
    monkeypatch.setenv("SAM_DEBLUR_WEIGHTS", str(path))
    return Published(manifest_path=path, files=files)
