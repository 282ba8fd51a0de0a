"""Fetch an HTTP(S) URL that a user gave us, treating it as hostile.

Job inputs given by URL (images, audio) are downloaded by the API at submission
with :func:`afetch`, on the event loop: a slow server holds no thread. Webhook
deliveries use it too, on the dispatcher's own event loop. A webhook URL is checked at
submission (``producer.addresses.acheck_url``), to refuse a bad one with a 422 before
anything is stored, and again at every delivery, since the name may resolve elsewhere by then.

What is refused, and how ``allow_hosts`` opens internal hosts: ``producer.addresses``.

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
``max_bytes`` is checked on a declared Content-Length before reading and on the bytes
read while streaming. Requests ask for ``Accept-Encoding: identity`` and an answer
compressed anyway is refused (:class:`ResponseRefused`): nothing is ever
decompressed. Network failures, timeouts and the deadline are
:class:`FetchFailed` (retryable). Any HTTP status is returned as is: whether a
404 or a 503 fails the job is the caller's decision.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Collection, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import httpx

from jobs.errors import InvalidInput
from producer.addresses import (
    Allow,
    FetchFailed,
    Target,
    UnsafeUrl,
    check_target,
    ip_literal,
    parse_url,
    show_url,
)

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"})
REDIRECTS = frozenset({301, 302, 303, 307, 308})
DEADLINE_TIMEOUTS = 3  # default deadline_s, in timeout_s: a connect, a first byte, a body
USER_AGENT = "mlq-fetch/1"
RESERVED_HEADERS = frozenset({"host", "accept-encoding", "content-length", "transfer-encoding", "connection"})
CROSS_ORIGIN_DROPPED = frozenset({"authorization", "cookie", "proxy-authorization"})


class ResponseRefused(InvalidInput):
    """The server answered with something refused: a body over max_bytes, or compressed."""

    code = "response_refused"


@dataclass(frozen=True)
class Fetched:
    """The answer to the last hop: any status, as the server gave it."""

    status: int
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes
    final_url: str  # the URL of the last hop, with its host name (not the address)
    address: str  # the checked address the last hop connected to


@dataclass(frozen=True)
class _Request:
    method: str
    body: bytes | None
    headers: Mapping[str, str] = field(default_factory=dict)


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
    allow = Allow.parse(allow_hosts)
    request = _Request(method=_method(method), body=body, headers=_caller_headers(headers))
    budget_s = deadline_s if deadline_s is not None else DEADLINE_TIMEOUTS * timeout_s
    try:
        async with asyncio.timeout(budget_s):
            return await _hops(url, request, allow, max_bytes=max_bytes, timeout_s=timeout_s,
                               max_redirects=max_redirects, ssl_context=ssl_context)  # fmt: skip
    except TimeoutError:
        raise FetchFailed(
            f"fetching {show_url(url)} took longer than its {budget_s:.3g}s deadline; try again later"
        ) from None


async def _hops(
    url: str,
    request: _Request,
    allow: Allow,
    *,
    max_bytes: int,
    timeout_s: float,
    max_redirects: int,
    ssl_context: ssl.SSLContext | None,
) -> Fetched:
    target = await check_target(parse_url(url), allow)
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
        target = await check_target(next_url, allow)
    raise UnsafeUrl(f"{show_url(url)} redirects more than {max_redirects} times; give the final URL instead")


@asynccontextmanager
async def _exchange(
    target: Target, request: _Request, *, timeout_s: float, ssl_context: ssl.SSLContext | None
) -> AsyncIterator[httpx.Response]:
    """Send ``request`` to the first checked address of ``target``; the response streams, unread."""
    address = target.addresses[0]
    headers = httpx.Headers({"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
    headers.update(request.headers)
    headers["Host"] = _host_header(target)
    extensions = {} if ip_literal(target.host) else {"sni_hostname": target.host}
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
        raise FetchFailed(f"{show_url(target.url)} did not answer within {timeout_s:.3g}s; try again later") from None
    except httpx.HTTPError as exc:
        raise FetchFailed(f"could not fetch {show_url(target.url)} ({type(exc).__name__}: {exc})") from None


@cache
def _default_tls() -> ssl.SSLContext:
    """certifi's trust store, built once: building it costs ~50 ms, and every hop gets a fresh client."""
    return httpx.create_ssl_context(trust_env=False)


async def _read(response: httpx.Response, *, url: httpx.URL, max_bytes: int) -> bytes:
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise ResponseRefused(f"{show_url(url)} answered with a {encoding!r}-encoded body though none was asked for")
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise ResponseRefused(f"{show_url(url)} declares {int(declared)} bytes, over the limit of {max_bytes}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_raw():
        size += len(chunk)
        if size > max_bytes:
            raise ResponseRefused(f"{show_url(url)} sent more than the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _follow(current: httpx.URL, location: str) -> httpx.URL:
    try:
        joined = current.join(location)
    except httpx.InvalidURL as exc:
        raise UnsafeUrl(f"{show_url(current)} redirects to an invalid URL: {exc}") from None
    following = parse_url(joined)
    if current.scheme == "https" and following.scheme == "http":
        raise UnsafeUrl(f"{show_url(current)} redirects from https to http, {show_url(following)}: refused")
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


def _host_header(target: Target) -> str:
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
