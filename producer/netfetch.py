"""Fetch an HTTP(S) URL that a user gave us, treating it as hostile.

Job inputs given by URL (images, audio) are downloaded by the API at submission
with :func:`afetch`, on the event loop: a slow server holds no thread. Webhook
deliveries use it too, on the dispatcher's own event loop. A webhook URL is checked with :func:`acheck_url` at
submission, to refuse a bad one with a 422 before anything is stored, and again
at every delivery, since the name may resolve elsewhere by then.

Refused with :class:`UnsafeUrl` (permanent), before any connection:

- a scheme other than ``http`` or ``https``, credentials in the URL (they would
  be stored with the job and logged), a port outside 1-65535, a URL over
  ``MAX_URL_CHARS``;
- a host with any address that is not public: loopback, private (RFC 1918,
  ``fc00::/7``), link-local (``169.254.169.254``, where cloud metadata lives,
  ``fe80::/10``), shared CGNAT space ``100.64.0.0/10``, site-local, reserved,
  and every other special-purpose range (``not ipaddress.is_global``). An
  IPv4-mapped address (``::ffff:127.0.0.1``) is treated as its IPv4 address;
  a 6to4, Teredo or NAT64 address is refused when the IPv4 address it embeds is;
- unspecified (``0.0.0.0``, ``::``), multicast and 240/4 (broadcast included),
  even for an allowed host: no HTTP server lives there, and ``0.0.0.0`` reaches
  the local machine on Linux;
- a redirect to a refused URL, from https to http, or more than ``max_redirects``.

``allow_hosts`` lets a deployment reach internal hosts. An exact host name
(ASCII, case-insensitive) accepts whatever its name resolves to; a network
(``10.0.0.0/8``, or one address such as ``127.0.0.1``) accepts the addresses
inside it, whatever name led there: that is no more than a user could reach by
writing the address in the URL.

Address pinning (defeats DNS rebinding). The host is resolved once, with
:func:`socket.getaddrinfo`, and every address it resolves to is checked. The
request then goes to the first of those addresses written as an IP literal in
the request URL, so httpx connects to it without looking the name up again.
The name travels in the ``Host`` header and, for https, in httpx's
``sni_hostname`` request extension, which httpcore passes to TLS as
``server_hostname``: the server gets the right SNI and its certificate is
verified against the name, not the address. Every hop gets a fresh client, so
a connection opened (and certificate checked) for one name is never reused for
another name that shares its address.

Limits of the approach: the client ignores the environment (``trust_env=False``):
a proxy would resolve the name itself and undo the pinning, so proxies are not
supported, and neither is ``.netrc``. Only the first address is tried, with no
fallback to the next when it does not answer. Name resolution runs on the event
loop's executor; the deadline stops the wait for it.

Limits on the exchange: ``timeout_s`` bounds each connect, write and read;
``deadline_s`` bounds the whole fetch, name resolution and redirects included;
``max_bytes`` is
checked on a declared Content-Length before reading and on the bytes read while
streaming. Requests ask for ``Accept-Encoding: identity`` and an answer
compressed anyway is refused (:class:`ResponseRefused`): nothing is ever
decompressed. Network failures, timeouts and the deadline are
:class:`FetchFailed` (retryable). Any HTTP status is returned as is: whether a
404 or a 503 fails the job is the caller's decision.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator, Collection, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import httpx

from jobs.errors import InvalidInput, RetryableError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

SCHEMES = frozenset({"http", "https"})
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"})
REDIRECTS = frozenset({301, 302, 303, 307, 308})
MAX_URL_CHARS = 2048  # what browsers, CDNs and our job rows all take without trouble
DEADLINE_TIMEOUTS = 3  # default deadline_s, in timeout_s: a connect, a first byte, a body
USER_AGENT = "mlq-fetch/1"
RESERVED_HEADERS = frozenset({"host", "accept-encoding", "content-length", "transfer-encoding", "connection"})
CROSS_ORIGIN_DROPPED = frozenset({"authorization", "cookie", "proxy-authorization"})

_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_RESERVED_V4 = ipaddress.IPv4Network("240.0.0.0/4")  # broadcast 255.255.255.255 included
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # well-known prefix: the last 32 bits are an IPv4 address
_NO_SUCH_NAME = frozenset({socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)})


class UnsafeUrl(InvalidInput):
    """The URL is refused: its scheme, credentials, address or redirects are not ones mlq fetches."""

    code = "unsafe_url"


class ResponseRefused(InvalidInput):
    """The server answered with something refused: a body over max_bytes, or compressed."""

    code = "response_refused"


class FetchFailed(RetryableError):
    """The URL could not be fetched for now: name resolution, connection, timeout or deadline."""

    code = "fetch_failed"


@dataclass(frozen=True)
class Fetched:
    """The answer to the last hop: any status, as the server gave it."""

    status: int
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes
    final_url: str  # the URL of the last hop, with its host name (not the address)
    address: str  # the checked address the last hop connected to


@dataclass(frozen=True)
class _Allow:
    names: frozenset[str]
    networks: tuple[IPNetwork, ...]

    @classmethod
    def parse(cls, entries: Collection[str]) -> _Allow:
        if isinstance(entries, str):
            raise TypeError(f"allow_hosts takes a collection of host names or networks, not the string {entries!r}")
        names: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in entries:
            try:
                networks.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError:
                names.add(_normal_host(entry))
        return cls(frozenset(names), tuple(networks))

    def covers(self, ip: IPAddress) -> bool:
        return any(ip in network for network in self.networks)


@dataclass(frozen=True)
class _Target:
    url: httpx.URL  # as given, without fragment
    host: str  # ASCII, lower case, no brackets, no trailing dot
    addresses: tuple[IPAddress, ...]  # all checked; the request goes to the first


@dataclass(frozen=True)
class _Request:
    method: str
    body: bytes | None
    headers: Mapping[str, str] = field(default_factory=dict)


def check_url(url: str, *, allow_hosts: Collection[str] = ()) -> list[IPAddress]:
    """:func:`acheck_url`, for code that runs no event loop."""
    return asyncio.run(acheck_url(url, allow_hosts=allow_hosts))


async def acheck_url(url: str, *, allow_hosts: Collection[str] = ()) -> list[IPAddress]:
    """Resolve the host of ``url`` once and return its addresses, every one of them safe to fetch.

    Raises :class:`UnsafeUrl` for a refused URL or a name that does not exist, and
    :class:`FetchFailed` when name resolution fails for now. Makes no connection.
    """
    return list((await _check(_parse(url), _Allow.parse(allow_hosts))).addresses)


def fetch(url: str, **options: Any) -> Fetched:
    """:func:`afetch`, for code that runs no event loop (the webhook dispatcher's thread)."""
    return asyncio.run(afetch(url, **options))


async def afetch(
    url: str,
    *,
    max_bytes: int,
    timeout_s: float,
    deadline_s: float | None = None,
    max_redirects: int = 3,
    allow_hosts: Collection[str] = (),
    method: str = "GET",
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> Fetched:
    """Fetch ``url``, following at most ``max_redirects`` redirects, each checked like the first URL.

    ``deadline_s`` (default ``DEADLINE_TIMEOUTS * timeout_s``) bounds the whole of it; ``ssl_context``
    defaults to the trust store httpx uses (certifi), pass one to trust an internal CA.
    """
    if max_bytes < 0 or timeout_s <= 0 or max_redirects < 0 or (deadline_s is not None and deadline_s <= 0):
        raise ValueError("fetch needs max_bytes >= 0, timeout_s > 0, deadline_s > 0 and max_redirects >= 0")
    allow = _Allow.parse(allow_hosts)
    request = _Request(method=_method(method), body=body, headers=_caller_headers(headers))
    budget_s = deadline_s if deadline_s is not None else DEADLINE_TIMEOUTS * timeout_s
    try:
        async with asyncio.timeout(budget_s):
            return await _hops(url, request, allow, max_bytes=max_bytes, timeout_s=timeout_s,
                               max_redirects=max_redirects, ssl_context=ssl_context)  # fmt: skip
    except TimeoutError:
        raise FetchFailed(
            f"fetching {_show(url)} took longer than its {budget_s:.3g}s deadline; try again later"
        ) from None


async def _hops(
    url: str,
    request: _Request,
    allow: _Allow,
    *,
    max_bytes: int,
    timeout_s: float,
    max_redirects: int,
    ssl_context: ssl.SSLContext | None,
) -> Fetched:
    target = await _check(_parse(url), allow)
    for hop in range(max_redirects + 1):
        async with _exchange(target, request, timeout_s=timeout_s, ssl_context=ssl_context) as response:
            location = response.headers.get("location") if response.status_code in REDIRECTS else None
            if location is None:
                data = await _read(response, url=target.url, max_bytes=max_bytes)
                return Fetched(
                    status=response.status_code,
                    headers=dict(response.headers.items()),
                    body=data,
                    final_url=str(target.url),
                    address=str(target.addresses[0]),
                )
        if hop == max_redirects:
            break
        next_url = _follow(target.url, location)
        cross_origin = _origin(next_url) != _origin(target.url)
        request = _redirected(request, status=response.status_code, cross_origin=cross_origin)
        target = await _check(next_url, allow)
    raise UnsafeUrl(f"{_show(url)} redirects more than {max_redirects} times; give the final URL instead")


def _parse(url: str | httpx.URL) -> httpx.URL:
    text = str(url)
    if len(text) > MAX_URL_CHARS:
        raise UnsafeUrl(f"the URL is {len(text)} characters long, over the {MAX_URL_CHARS} allowed")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise UnsafeUrl(f"{_show(text)} is not a valid URL: {exc}") from None
    if parsed.scheme not in SCHEMES:
        scheme = f"{parsed.scheme}:" if parsed.scheme else "a URL without scheme"
        raise UnsafeUrl(f"{_show(text)}: only http and https URLs are fetched, not {scheme}")
    if not _normal_host(parsed.raw_host.decode("ascii")):
        raise UnsafeUrl(f"{_show(text)} has no host")
    if parsed.userinfo:
        raise UnsafeUrl(f"{_show(parsed.copy_with(username=None, password=None))}: credentials in URLs are refused")
    if parsed.port is not None and not 1 <= parsed.port <= 65535:
        raise UnsafeUrl(f"{_show(text)}: port {parsed.port} is not between 1 and 65535")
    return parsed.copy_with(fragment=None)


async def _check(url: httpx.URL, allow: _Allow) -> _Target:
    host = _normal_host(url.raw_host.decode("ascii"))
    port = url.port or (443 if url.scheme == "https" else 80)
    addresses = await _resolve(host, port)
    named = host in allow.names
    for ip in addresses:
        reason = _refusal(ip, allow, named=named)
        if reason is not None:
            where = str(ip) if _ip_literal(host) else f"{host} resolves to {ip}, which"
            raise UnsafeUrl(f"{_show(url)}: {where} is {reason}; only public addresses are fetched")
    return _Target(url=url, host=host, addresses=addresses)


async def _resolve(host: str, port: int) -> tuple[IPAddress, ...]:
    literal = _ip_literal(host)
    if literal is not None:
        return (_unmapped(literal),)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except UnicodeError:
        raise UnsafeUrl(f"{host!r} is not a valid host name") from None
    except socket.gaierror as exc:
        if exc.errno in _NO_SUCH_NAME:
            raise UnsafeUrl(f"host {host} does not exist: check the URL") from None
        raise FetchFailed(f"could not resolve {host} ({exc.strerror}); try again later") from None
    found = [_unmapped(ipaddress.ip_address(str(info[4][0]))) for info in infos if info[0] in _FAMILIES]
    if not found:
        raise UnsafeUrl(f"host {host} has no IPv4 or IPv6 address")
    return tuple(dict.fromkeys(found))  # unique, in the resolver's order


_FAMILIES = (socket.AF_INET, socket.AF_INET6)


def _refusal(ip: IPAddress, allow: _Allow, *, named: bool) -> str | None:
    """Why ``ip`` may not be fetched from, or None when it may; ``named``: the host name is allowed."""
    if ip.is_unspecified or ip.is_multicast or ip in _RESERVED_V4:
        return "an unspecified, multicast or broadcast address, never fetched"
    if named or allow.covers(ip):
        return None
    for inner in _embedded_v4(ip):
        reason = _refusal(inner, allow, named=False)
        if reason is not None:
            return f"an address embedding {inner}, which is {reason}"
    return _private_kind(ip)


def _private_kind(ip: IPAddress) -> str | None:
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address (where cloud metadata services answer)"
    if ip in _CGNAT:
        return "in the shared address space 100.64.0.0/10 (carrier-grade NAT)"
    if ip.is_private:
        return "a private address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return "a site-local address"
    if ip.is_reserved or not ip.is_global:
        return "a reserved or special-purpose address"
    return None


def _embedded_v4(ip: IPAddress) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses a packet to ``ip`` may end up at: 6to4, Teredo (server and client), NAT64."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return []
    if ip.sixtofour is not None:
        return [ip.sixtofour]
    if ip.teredo is not None:
        return list(ip.teredo)
    if ip in _NAT64:
        return [ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)]
    return []


def _unmapped(ip: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address (``::ffff:a.b.c.d``) is its IPv4 address: checked and connected to as such."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _normal_host(host: str) -> str:
    return host.strip().lower().rstrip(".")


@asynccontextmanager
async def _exchange(
    target: _Target, request: _Request, *, timeout_s: float, ssl_context: ssl.SSLContext | None
) -> AsyncIterator[httpx.Response]:
    """Send ``request`` to the first checked address of ``target``; the response streams, unread."""
    address = target.addresses[0]
    headers = httpx.Headers({"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
    headers.update(request.headers)
    headers["Host"] = _host_header(target)
    extensions = {} if _ip_literal(target.host) else {"sni_hostname": target.host}
    try:
        async with httpx.AsyncClient(
            trust_env=False, timeout=timeout_s, verify=ssl_context or _default_tls(), follow_redirects=False
        ) as client:
            pinned = client.build_request(
                request.method,
                target.url.copy_with(host=str(address)),
                headers=headers,
                content=request.body,
                extensions=extensions,
            )
            response = await client.send(pinned, stream=True)
            try:
                yield response
            finally:
                await response.aclose()
    except httpx.TimeoutException:
        raise FetchFailed(f"{_show(target.url)} did not answer within {timeout_s:.3g}s; try again later") from None
    except httpx.HTTPError as exc:
        raise FetchFailed(f"could not fetch {_show(target.url)} ({type(exc).__name__}: {exc})") from None


@cache
def _default_tls() -> ssl.SSLContext:
    """certifi's trust store, built once: building it costs ~50 ms, and every hop gets a fresh client."""
    return httpx.create_ssl_context(trust_env=False)


async def _read(response: httpx.Response, *, url: httpx.URL, max_bytes: int) -> bytes:
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise ResponseRefused(f"{_show(url)} answered with a {encoding!r}-encoded body though none was asked for")
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise ResponseRefused(f"{_show(url)} declares {int(declared)} bytes, over the limit of {max_bytes}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_raw():
        size += len(chunk)
        if size > max_bytes:
            raise ResponseRefused(f"{_show(url)} sent more than the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _follow(current: httpx.URL, location: str) -> httpx.URL:
    try:
        joined = current.join(location)
    except httpx.InvalidURL as exc:
        raise UnsafeUrl(f"{_show(current)} redirects to an invalid URL: {exc}") from None
    following = _parse(joined)
    if current.scheme == "https" and following.scheme == "http":
        raise UnsafeUrl(f"{_show(current)} redirects from https to http, {_show(following)}: refused")
    return following


def _redirected(request: _Request, *, status: int, cross_origin: bool) -> _Request:
    """The request to send to a redirect's target: as browsers and httpx do it."""
    method, body, headers = request.method, request.body, dict(request.headers)
    if (status == 303 and method != "HEAD") or (status in (301, 302) and method == "POST"):
        method, body = "GET", None
        headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
    if cross_origin:
        headers = {k: v for k, v in headers.items() if k.lower() not in CROSS_ORIGIN_DROPPED}
    return _Request(method=method, body=body, headers=headers)


def _origin(url: httpx.URL) -> tuple[str, bytes, int | None]:
    return url.scheme, url.raw_host.lower(), url.port


def _host_header(target: _Target) -> str:
    host = f"[{target.host}]" if ":" in target.host else target.host
    return host if target.url.port is None else f"{host}:{target.url.port}"


def _method(method: str) -> str:
    upper = method.upper()
    if upper not in METHODS:
        raise ValueError(f"method {method!r} is not one of {sorted(METHODS)}")
    return upper


def _caller_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    given = dict(headers or {})
    reserved = sorted(k for k in given if k.lower() in RESERVED_HEADERS)
    if reserved:
        raise ValueError(f"headers {reserved} are set by fetch itself; leave them out")
    return given


def _show(url: str | httpx.URL, limit: int = 200) -> str:
    """The URL for a message: credentials would already have been refused; long ones are cut."""
    text = str(url)
    return text if len(text) <= limit else text[: limit - 1] + "…"
