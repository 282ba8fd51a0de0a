"""The harness of producer.netfetch's tests: a local HTTP server with hostile handlers, and an
autouse guard that fails any test that tries to connect anywhere but 127.0.0.1.

Name resolution is faked (numeric hosts and ``localhost`` excepted, which never leave the
machine), so no test sends a packet off this host.
"""

from __future__ import annotations

import http.server
import socket
import socketserver
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

LOOPBACK = "127.0.0.1"
RELEASE_S = 5.0  # longest a stalling handler holds on; tests release it at teardown


# ---------------------------------------------------------------- guards: no traffic off this host


@dataclass
class Net:
    connects: list[tuple[str, int]] = field(default_factory=list)
    lookups: list[str] = field(default_factory=list)
    names: dict[str, Callable[[], list[str]]] = field(default_factory=dict)

    def resolve(self, name: str, *addresses: str) -> None:
        self.names[name] = lambda: list(addresses)


@pytest.fixture(autouse=True)
def net(monkeypatch: pytest.MonkeyPatch) -> Net:
    """Connections only to 127.0.0.1 (recorded); fake DNS for names (recorded)."""
    state = Net()
    real_connect = socket.socket.connect
    real_getaddrinfo = socket.getaddrinfo

    def connect(sock: socket.socket, address: Any) -> None:
        host, port = address[0], address[1]
        if host != LOOPBACK:
            pytest.fail(f"a connection to {host}:{port} was attempted")
        state.connects.append((host, port))
        real_connect(sock, address)

    def connect_ex(sock: socket.socket, address: Any) -> int:
        pytest.fail(f"connect_ex to {address} was attempted")

    def getaddrinfo(host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0) -> Any:
        text = host.decode() if isinstance(host, bytes) else str(host)
        try:  # numeric forms (127.1, 2130706433, ::1) are parsed locally, never looked up
            return real_getaddrinfo(text, port, family, type, proto, flags | socket.AI_NUMERICHOST)
        except socket.gaierror:
            pass
        state.lookups.append(text)
        if text == "localhost":  # /etc/hosts
            return real_getaddrinfo(text, port, family, type, proto, flags)
        if text not in state.names:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [real_getaddrinfo(a, port, 0, type, proto, socket.AI_NUMERICHOST)[0] for a in state.names[text]()]

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return state


# ---------------------------------------------------------------- a local HTTP server


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__((LOOPBACK, 0), Handler)
        self.seen: list[Seen] = []
        self.connections = 0
        self.release = threading.Event()
        self.sni: list[str | None] = []

    def server_bind(self) -> None:  # HTTPServer's would do a reverse lookup of the address
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = LOOPBACK, self.server_address[1]

    def process_request(self, request: Any, client_address: Any) -> None:
        self.connections += 1
        super().process_request(request, client_address)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def url(self, path: str, host: str = LOOPBACK, scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"


class Handler(http.server.BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.handle_any()

    def do_POST(self) -> None:
        self.handle_any()

    def handle_any(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        self.server.seen.append(Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        route = ROUTES.get(url.path)
        if route is None:
            self.reply(404, b"no such route")
        else:
            route(self, {k: v[0] for k, v in parse_qs(url.query).items()})

    def reply(self, status: int, body: bytes, **headers: str) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def ok(h: Handler, q: dict[str, str]) -> None:
    h.reply(200, b"hello", Content_Type="text/plain")


def echo(h: Handler, q: dict[str, str]) -> None:
    h.reply(200, h.command.encode() + b" " + h.server.seen[-1].body)


def redirect(h: Handler, q: dict[str, str]) -> None:
    h.reply(int(q.get("status", "302")), b"", Location=q["to"])


def loop(h: Handler, q: dict[str, str]) -> None:
    n = int(q.get("n", "0"))
    h.reply(302, b"", Location=f"/loop?n={n + 1}")


def chunked(h: Handler, q: dict[str, str]) -> None:
    """1,000-byte chunks with no Content-Length: only counting while streaming can stop it."""
    h.send_response(200)
    h.send_header("Transfer-Encoding", "chunked")
    h.end_headers()
    for _ in range(int(q.get("chunks", "10"))):
        h.wfile.write(b"3e8\r\n" + b"x" * 1000 + b"\r\n")
        h.wfile.flush()
    h.wfile.write(b"0\r\n\r\n")


def declares_big(h: Handler, q: dict[str, str]) -> None:
    """Declares 10 MB, sends 10 bytes and stalls: reading it would time out, refusing early does not."""
    h.send_response(200)
    h.send_header("Content-Length", "10000000")
    h.end_headers()
    h.wfile.write(b"x" * 10)
    h.wfile.flush()
    h.server.release.wait(RELEASE_S)


def slow(h: Handler, q: dict[str, str]) -> None:
    h.server.release.wait(RELEASE_S)
    h.reply(200, b"late")


def drip(h: Handler, q: dict[str, str]) -> None:
    """A byte every 0.1 s: each read is well within timeout_s, the whole is not within the deadline."""
    h.send_response(200)
    h.send_header("Content-Length", "100")
    h.end_headers()
    for _ in range(100):
        h.wfile.write(b"x")
        h.wfile.flush()
        if h.server.release.wait(0.1):
            return


def gzipped(h: Handler, q: dict[str, str]) -> None:
    h.reply(200, b"\x1f\x8b not really", Content_Encoding="gzip")


ROUTES: dict[str, Callable[[Handler, dict[str, str]], None]] = {
    "/ok": ok,
    "/echo": echo,
    "/redirect": redirect,
    "/loop": loop,
    "/chunked": chunked,
    "/declares-big": declares_big,
    "/slow": slow,
    "/drip": drip,
    "/gzip": gzipped,
}


def serve(server: Server) -> Iterator[Server]:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    yield from serve(Server())


ALLOW = frozenset({LOOPBACK})
LIMITS: dict[str, Any] = {"max_bytes": 100_000, "timeout_s": 1.0}
