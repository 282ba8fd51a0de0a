"""Inputs by URL through the real API: a public file is downloaded once and stored like an
upload; loopback, private, link-local and non-http URLs are refused (422) without a
connection; a redirect is checked again; bombs behind a URL are refused from their headers."""

from __future__ import annotations

import contextlib
import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from jobs.settings import Settings
from mlq.embedded import free_port
from tests.conftest import Api, create_key, start_api
from tests.unit.models.test_audio import wav_claiming_hours
from tests.unit.models.test_vision import bomb_png, png_claiming

DOG = (Path(__file__).resolve().parents[2] / "mlq" / "assets" / "dog.png").read_bytes()


class Files(http.server.BaseHTTPRequestHandler):
    routes: ClassVar[dict[str, tuple[int, dict[str, str], bytes]]] = {}
    seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.seen.append(self.path)
        status, headers, body = self.routes.get(self.path, (404, {}, b""))
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def files() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Files)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    Files.routes.update({
        "/dog.png": (200, {"Content-Type": "image/png"}, DOG),
        "/huge.png": (200, {"Content-Type": "image/png"}, png_claiming(50_000, 50_000)),
        "/bomb.png": (200, {"Content-Type": "image/png"}, bomb_png(20_000, 20_000)),
        "/hours.wav": (200, {"Content-Type": "audio/wav"}, wav_claiming_hours()),
        "/to-private": (302, {"Location": "http://10.0.0.1/secret.png"}, b""),
        "/to-metadata": (302, {"Location": "http://169.254.169.254/latest/meta-data/"}, b""),
    })  # fmt: skip
    yield base
    server.shutdown()


@pytest.fixture(scope="module")
def strict_api(settings: Settings) -> Iterator[Api]:
    """An API that allows no internal host at all (the tests' usual one allows 127.0.0.1)."""
    api, proc = start_api(Settings(**{**settings.model_dump(), "allow_hosts": []}), "api-strict")
    try:
        yield api
    finally:
        proc.stop()


def image_job(url: str) -> dict[str, object]:
    return {"kind": "image-classification", "input": {"image": {"url": url}}}


def test_a_public_image_by_url_is_downloaded_once_and_stored_like_an_upload(
    api_without_workers: Api, key: str, files: str
) -> None:
    Files.seen.clear()
    with api_without_workers.client(key) as http:
        answer = http.post("/v1/jobs", json=image_job(f"{files}/dog.png"))
        assert answer.status_code == 202, answer.text
        job = http.get(f"/v1/jobs/{answer.json()['id']}").json()
    assert job["input"]["image"] == {"artifact": "input-image"}  # the URL is not kept; the bytes are
    assert Files.seen == ["/dog.png"]


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/huge.png", "max_image_pixels"),
        ("/bomb.png", "max_image_pixels"),
        ("/missing.png", "HTTP 404"),
        ("/to-private", "private"),
        ("/to-metadata", "link-local"),
    ],
)
def test_bombs_errors_and_redirects_behind_a_url_are_refused(
    api_without_workers: Api, key: str, files: str, path: str, reason: str
) -> None:
    with api_without_workers.client(key) as http:
        answer = http.post("/v1/jobs", json=image_job(f"{files}{path}"))
    assert answer.status_code == 422, answer.text
    [error] = answer.json()["detail"]
    assert error["loc"][:3] == ["body", "input", "image"]  # .url, or the image itself for a bomb
    assert reason in error["msg"]


def test_audio_claiming_hours_behind_a_url_is_refused(api_without_workers: Api, key: str, files: str) -> None:
    with api_without_workers.client(key) as http:
        answer = http.post(
            "/v1/jobs", json={"kind": "speech-recognition", "input": {"audio": {"url": f"{files}/hours.wav"}}}
        )
    assert answer.status_code == 422 and "max_audio_s=600" in answer.text


@pytest.fixture
def listener() -> Iterator[tuple[int, list[object]]]:
    """A port on 127.0.0.1 and on ::1 that records any connection made to it."""
    port, accepted = free_port(), []
    sockets = []
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:  # no IPv6 on this machine
            sock.close()
            continue
        sock.listen()
        sock.settimeout(0.2)
        sockets.append(sock)
    yield port, accepted
    for sock in sockets:
        with contextlib.suppress(TimeoutError):
            accepted.append(sock.accept())
        sock.close()
    assert accepted == [], "a refused URL was connected to"


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        ("http://127.0.0.1:{port}/x.png", "loopback"),
        ("http://localhost:{port}/x.png", "loopback"),
        ("http://[::1]:{port}/x.png", "loopback"),
        ("http://[::ffff:127.0.0.1]:{port}/x.png", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://10.0.0.1/x.png", "private"),
        ("http://100.64.0.1/x.png", "shared"),
        ("file:///etc/passwd", "only http and https"),
        ("gopher://127.0.0.1:{port}/x", "only http and https"),
    ],
)
def test_urls_to_internal_addresses_are_refused_without_connecting(
    strict_api: Api, listener: tuple[int, list[object]], template: str, reason: str
) -> None:
    port, _ = listener
    with strict_api.client(create_key(strict_api.settings, "url-refusals")) as http:
        answer = http.post("/v1/jobs", json=image_job(template.format(port=port)))
    assert answer.status_code == 422, answer.text
    [error] = answer.json()["detail"]
    assert error["loc"] == ["body", "input", "image", "url"]
    assert "unsafe_url" in error["msg"] and reason in error["msg"].lower(), error["msg"]
