"""producer.netfetch: redirects, address pinning, https (SNI and the certificate's name) and its
errors. Real sockets only on 127.0.0.1 (the guard and server: conftest.py)."""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobs.errors import InvalidInput, PermanentError, RetryableError
from producer.addresses import FetchFailed, UnsafeUrl
from producer.netfetch import ResponseRefused, fetch
from tests.security.netfetch.conftest import ALLOW, LIMITS, LOOPBACK, Net, Server, serve

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
