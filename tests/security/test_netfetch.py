"""producer.netfetch: hostile URLs are refused before any connection; allowed ones are fetched within limits.

Real sockets only on 127.0.0.1. An autouse guard fails any test that tries to
connect anywhere else, and name resolution is faked (numeric hosts and
``localhost`` excepted, which never leave the machine), so no test sends a
packet off this host.
"""

from __future__ import annotations

import http.server
import ipaddress
import socket
import socketserver
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from jobs.errors import InvalidInput, PermanentError, RetryableError
from producer.addresses import FetchFailed, UnsafeUrl, check_url
from producer.netfetch import ResponseRefused, fetch

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


# ---------------------------------------------------------------- refused before any connection

REFUSED = [
    ("http://127.0.0.1:{port}/ok", "loopback"),
    ("http://127.1:{port}/ok", "loopback"),
    ("http://2130706433:{port}/ok", "loopback"),
    ("http://localhost:{port}/ok", "loopback"),
    ("http://[::1]:{port}/ok", "loopback"),
    ("http://[::ffff:127.0.0.1]:{port}/ok", "loopback"),
    ("http://0.0.0.0:{port}/ok", "unspecified"),
    ("http://[::]:{port}/ok", "unspecified"),
    ("http://169.254.169.254/latest/meta-data", "link-local"),
    ("http://[fe80::1]/", "link-local"),
    ("http://10.0.0.1/", "private"),
    ("http://172.16.5.4/", "private"),
    ("http://192.168.1.1/", "private"),
    ("http://[fd00::1]/", "private"),
    ("http://100.64.0.1/", "100.64.0.0/10"),
    ("http://224.0.0.1/", "multicast"),
    ("http://255.255.255.255/", "broadcast"),
    ("http://192.0.2.1/", "private"),  # documentation range: private to Python
    ("http://[::7f00:1]/", "reserved"),  # IPv4-compatible, deprecated
    ("http://[2002:7f00:1::]/", "embedding 127.0.0.1"),
    ("http://[64:ff9b::a00:1]/", "embedding 10.0.0.1"),
    ("http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/", "private"),  # Teredo
    ("http://mixed.test/", "mixed.test resolves to 10.0.0.1"),
    ("http://nowhere.test/", "does not exist"),
    ("file:///etc/passwd", "only http and https"),
    ("gopher://x/", "only http and https"),
    ("ftp://x/", "only http and https"),
    ("example.com/path", "without scheme"),
    ("//example.com/path", "without scheme"),
    ("http:///path", "has no host"),
    ("http://user:secret@public.test/", "credentials"),
    ("http://public.test:99999/", "port 99999"),
    ("http://public.test:0/", "port 0"),
    ("http://public.test/\r\nHost: x", "not a valid URL"),
    ("http://public.test/" + "a" * 2100, "2048 allowed"),
]


@pytest.mark.parametrize(("template", "reason"), REFUSED)
def test_refused_before_any_connection(net: Net, server: Server, template: str, reason: str) -> None:
    net.resolve("public.test", "93.184.216.34")
    net.resolve("mixed.test", "93.184.216.34", "10.0.0.1")
    url = template.format(port=server.port)
    with pytest.raises(UnsafeUrl, match=reason):
        check_url(url)
    with pytest.raises(UnsafeUrl, match=reason) as refused:
        fetch(url, **LIMITS)
    assert "secret" not in str(refused.value)
    assert net.connects == []
    assert server.connections == 0


def test_public_addresses_pass_the_check_without_connecting(net: Net) -> None:
    net.resolve("public.test", "93.184.216.34", "2606:4700::1111")
    assert check_url("https://public.test:8443/a?b=c#d") == [
        ipaddress.ip_address("93.184.216.34"),
        ipaddress.ip_address("2606:4700::1111"),
    ]
    assert check_url("http://8.8.8.8/") == [ipaddress.ip_address("8.8.8.8")]
    assert check_url("HTTP://[2001:4860:4860::8888]/") == [ipaddress.ip_address("2001:4860:4860::8888")]
    assert check_url("http://[::ffff:8.8.8.8]/") == [ipaddress.ip_address("8.8.8.8")]  # mapped: as its IPv4
    assert check_url("http://[2002:808:808::]/") == [ipaddress.ip_address("2002:808:808::")]  # 6to4 of 8.8.8.8
    assert net.connects == []


def test_allow_hosts_opens_exactly_what_it_names(net: Net) -> None:
    net.resolve("internal.test", "10.1.2.3")
    assert check_url("http://internal.test/", allow_hosts={"Internal.Test."}) == [ipaddress.ip_address("10.1.2.3")]
    assert check_url("http://10.9.9.9/", allow_hosts={"10.0.0.0/8"}) == [ipaddress.ip_address("10.9.9.9")]
    assert check_url("http://internal.test/", allow_hosts={"10.1.2.0/24"}) == [ipaddress.ip_address("10.1.2.3")]
    with pytest.raises(UnsafeUrl, match="private"):
        check_url("http://10.0.0.1/", allow_hosts={"internal.test", "10.1.2.0/24"})
    with pytest.raises(UnsafeUrl, match="link-local"):
        check_url("http://169.254.169.254/", allow_hosts={"127.0.0.0/8"})
    with pytest.raises(UnsafeUrl, match="unspecified"):  # 0.0.0.0 is never fetched, even if listed
        check_url("http://0.0.0.0/", allow_hosts={"0.0.0.0/0"})
    with pytest.raises(TypeError, match="collection"):
        check_url("http://10.1.2.3/", allow_hosts="10.1.2.3")
    assert net.connects == []


def test_resolution_failing_for_now_is_retryable(monkeypatch: pytest.MonkeyPatch) -> None:
    def down(*args: Any, **kwargs: Any) -> Any:
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", down)
    with pytest.raises(FetchFailed, match="try again"):
        check_url("http://public.test/")


# ---------------------------------------------------------------- fetching from an allowed host


@pytest.mark.parametrize("allow", [{"127.0.0.1"}, {"127.0.0.0/8"}])
def test_allowed_host_is_fetched(net: Net, server: Server, allow: set[str]) -> None:
    got = fetch(server.url("/ok#frag"), allow_hosts=allow, **LIMITS)
    assert (got.status, got.body, got.headers["content-type"]) == (200, b"hello", "text/plain")
    assert got.final_url == server.url("/ok")
    assert got.address == LOOPBACK
    [seen] = server.seen
    assert seen.headers["host"] == f"127.0.0.1:{server.port}"
    assert seen.headers["accept-encoding"] == "identity"
    assert net.connects == [(LOOPBACK, server.port)]


def test_body_over_max_bytes_is_refused_while_streaming(server: Server) -> None:
    assert len(fetch(server.url("/chunked"), allow_hosts=ALLOW, max_bytes=10_000, timeout_s=1).body) == 10_000
    with pytest.raises(ResponseRefused, match="more than the limit of 2500 bytes"):
        fetch(server.url("/chunked"), allow_hosts=ALLOW, max_bytes=2500, timeout_s=1)


def test_declared_length_over_max_bytes_is_refused_before_reading(server: Server) -> None:
    started = time.monotonic()
    with pytest.raises(ResponseRefused, match="declares 10000000 bytes, over the limit of 1000"):
        fetch(server.url("/declares-big"), allow_hosts=ALLOW, max_bytes=1000, timeout_s=1)
    assert time.monotonic() - started < 0.5  # reading the stalled body would have waited timeout_s


def test_silent_server_times_out(server: Server) -> None:
    started = time.monotonic()
    with pytest.raises(FetchFailed, match=r"did not answer within 0\.3s"):
        fetch(server.url("/slow"), allow_hosts=ALLOW, max_bytes=1000, timeout_s=0.3)
    assert time.monotonic() - started < 1.0


def test_dripping_server_hits_the_deadline(server: Server) -> None:
    started = time.monotonic()
    with pytest.raises(FetchFailed, match="deadline"):
        fetch(server.url("/drip"), allow_hosts=ALLOW, max_bytes=1000, timeout_s=1, deadline_s=0.4)
    assert time.monotonic() - started < 1.0


def test_closed_port_is_retryable(server: Server) -> None:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        port = probe.getsockname()[1]  # bound, never listening: the connection is refused
        with pytest.raises(FetchFailed, match="could not fetch") as failed:
            fetch(f"http://127.0.0.1:{port}/", allow_hosts=ALLOW, **LIMITS)
    assert isinstance(failed.value, RetryableError)


def test_compressed_answer_is_refused(server: Server) -> None:
    with pytest.raises(ResponseRefused, match="'gzip'-encoded"):
        fetch(server.url("/gzip"), allow_hosts=ALLOW, **LIMITS)


# ---------------------------------------------------------------- redirects


def test_redirect_to_private_address_is_refused_on_the_hop(net: Net, server: Server) -> None:
    with pytest.raises(UnsafeUrl, match=r"10\.0\.0\.1 is a private address"):
        fetch(server.url("/redirect?to=http://10.0.0.1/"), allow_hosts=ALLOW, **LIMITS)
    assert net.connects == [(LOOPBACK, server.port)]  # the guard fails the test on any other
    assert [s.path for s in server.seen] == ["/redirect?to=http://10.0.0.1/"]


def test_redirect_to_another_scheme_is_refused(server: Server) -> None:
    with pytest.raises(UnsafeUrl, match="only http and https"):
        fetch(server.url("/redirect?to=file:///etc/passwd"), allow_hosts=ALLOW, **LIMITS)


def test_redirects_are_followed_up_to_max_redirects(server: Server) -> None:
    got = fetch(server.url("/redirect?to=/redirect%3Fto%3D/ok"), allow_hosts=ALLOW, max_redirects=2, **LIMITS)
    assert (got.status, got.body, got.final_url) == (200, b"hello", server.url("/ok"))
    with pytest.raises(UnsafeUrl, match="redirects more than 3 times"):
        fetch(server.url("/loop"), allow_hosts=ALLOW, **LIMITS)
    assert [s.path for s in server.seen[3:]] == ["/loop", "/loop?n=1", "/loop?n=2", "/loop?n=3"]
    with pytest.raises(UnsafeUrl, match="redirects more than 0 times"):
        fetch(server.url("/loop"), allow_hosts=ALLOW, max_redirects=0, **LIMITS)


def test_redirect_to_another_origin_drops_credentials(net: Net, server: Server) -> None:
    net.resolve("other.test", LOOPBACK)
    target = server.url("/echo", host="other.test")
    got = fetch(
        server.url(f"/redirect?status=307&to={target}"),
        allow_hosts=ALLOW,
        method="post",
        body=b"payload",
        headers={"Authorization": "Bearer s3cret", "X-Signature": "sig"},
        **LIMITS,
    )
    assert got.body == b"POST payload"  # 307 keeps method and body
    assert got.final_url == target
    first, second = server.seen
    assert first.headers["authorization"] == "Bearer s3cret"
    assert "authorization" not in second.headers
    assert second.headers["x-signature"] == "sig"
    assert second.headers["host"] == f"other.test:{server.port}"


def test_303_turns_a_post_into_a_get(server: Server) -> None:
    got = fetch(server.url("/redirect?status=303&to=/echo"), allow_hosts=ALLOW, method="POST", body=b"x", **LIMITS)
    assert got.body == b"GET "


# ---------------------------------------------------------------- address pinning


def test_dns_rebinding_cannot_move_the_connection(net: Net, server: Server) -> None:
    """The name is checked on its first answer, and the connection goes to that very address."""
    answers = iter([[LOOPBACK]])
    net.names["rebind.test"] = lambda: next(answers, ["10.0.0.1"])  # every later lookup: elsewhere
    got = fetch(server.url("/ok", host="rebind.test"), allow_hosts={"127.0.0.0/8"}, **LIMITS)
    assert (got.body, got.address, got.final_url) == (b"hello", LOOPBACK, server.url("/ok", host="rebind.test"))
    assert net.lookups == ["rebind.test"]
    assert net.connects == [(LOOPBACK, server.port)]
    assert server.seen[0].headers["host"] == f"rebind.test:{server.port}"


def test_each_hop_is_resolved_and_checked_again(net: Net, server: Server) -> None:
    answers = iter([[LOOPBACK]])
    net.names["rebind.test"] = lambda: next(answers, ["10.0.0.1"])
    again = server.url("/ok", host="rebind.test")
    with pytest.raises(UnsafeUrl, match=r"rebind\.test resolves to 10\.0\.0\.1, which is a private address"):
        fetch(server.url(f"/redirect?to={again}", host="rebind.test"), allow_hosts={"127.0.0.0/8"}, **LIMITS)
    assert net.lookups == ["rebind.test", "rebind.test"]
    assert net.connects == [(LOOPBACK, server.port)]


# ---------------------------------------------------------------- https: SNI and certificate name


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"),
            *("-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=pinned.test"),
            *("-addext", "subjectAltName=DNS:pinned.test", "-addext", "basicConstraints=critical,CA:TRUE"),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


@pytest.fixture
def tls_server(certificate: tuple[Path, Path]) -> Iterator[Server]:
    server = Server()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    context.sni_callback = lambda sock, name, ctx: server.sni.append(name)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    yield from serve(server)


@pytest.fixture
def client_tls(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certificate[0]))


def test_https_sends_the_name_as_sni_and_checks_the_certificate_against_it(
    net: Net, tls_server: Server, client_tls: ssl.SSLContext
) -> None:
    net.resolve("pinned.test", LOOPBACK)
    net.resolve("wrong.test", LOOPBACK)
    url = tls_server.url("/ok", host="pinned.test", scheme="https")
    got = fetch(url, allow_hosts={"pinned.test"}, ssl_context=client_tls, **LIMITS)
    assert (got.body, got.final_url, got.address) == (b"hello", url, LOOPBACK)
    assert tls_server.sni == ["pinned.test"]
    assert tls_server.seen[0].headers["host"] == f"pinned.test:{tls_server.port}"
    wrong = tls_server.url("/ok", host="wrong.test", scheme="https")
    with pytest.raises(FetchFailed, match="could not fetch"):  # the certificate names pinned.test only
        fetch(wrong, allow_hosts={"wrong.test"}, ssl_context=client_tls, **LIMITS)
    assert {host for host, _ in net.connects} == {LOOPBACK}


def test_https_redirect_to_http_is_refused(net: Net, tls_server: Server, client_tls: ssl.SSLContext) -> None:
    net.resolve("pinned.test", LOOPBACK)
    url = tls_server.url("/redirect?to=http://pinned.test/ok", host="pinned.test", scheme="https")
    with pytest.raises(UnsafeUrl, match="from https to http"):
        fetch(url, allow_hosts={"pinned.test"}, ssl_context=client_tls, **LIMITS)


# ---------------------------------------------------------------- the interface


def test_errors_are_permanent_or_retryable() -> None:
    assert issubclass(UnsafeUrl, InvalidInput) and issubclass(ResponseRefused, InvalidInput)
    assert issubclass(UnsafeUrl, PermanentError) and not issubclass(UnsafeUrl, RetryableError)
    assert issubclass(FetchFailed, RetryableError)
    codes = (UnsafeUrl.code, ResponseRefused.code, FetchFailed.code)
    assert codes == ("unsafe_url", "response_refused", "fetch_failed")


def test_caller_mistakes_are_value_errors() -> None:
    with pytest.raises(ValueError, match="set by fetch"):
        fetch("http://8.8.8.8/", headers={"host": "x"}, **LIMITS)
    with pytest.raises(ValueError, match="TRACE"):
        fetch("http://8.8.8.8/", method="TRACE", **LIMITS)
    with pytest.raises(ValueError, match="timeout_s > 0"):
        fetch("http://8.8.8.8/", max_bytes=1, timeout_s=0)
