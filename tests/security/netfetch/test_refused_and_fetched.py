"""producer.netfetch: hostile URLs are refused before any connection; allowed ones are fetched
within limits. Real sockets only on 127.0.0.1 (the guard and server: conftest.py)."""

from __future__ import annotations

import ipaddress
import socket
import time
from typing import Any

import pytest

from jobs.errors import RetryableError
from producer.addresses import FetchFailed, UnsafeUrl, check_url
from producer.netfetch import ResponseRefused, fetch
from tests.security.netfetch.conftest import ALLOW, LIMITS, LOOPBACK, Net, Server

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
