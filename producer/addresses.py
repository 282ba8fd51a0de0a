"""Which URLs and addresses mlq fetches from, a user's URL treated as hostile (``producer.netfetch``
sends the requests).

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
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Collection
from dataclasses import dataclass

import httpx

from jobs.errors import InvalidInput, RetryableError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

SCHEMES = frozenset({"http", "https"})
MAX_URL_CHARS = 2048  # what browsers, CDNs and our job rows all take without trouble
_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_RESERVED_V4 = ipaddress.IPv4Network("240.0.0.0/4")  # broadcast 255.255.255.255 included
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # well-known prefix: the last 32 bits are an IPv4 address
_NO_SUCH_NAME = frozenset({socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)})


class UnsafeUrl(InvalidInput):
    """The URL is refused: its scheme, credentials, address or redirects are not ones mlq fetches."""

    code = "unsafe_url"


class FetchFailed(RetryableError):
    """The URL could not be fetched for now: name resolution, connection, timeout or deadline."""

    code = "fetch_failed"


@dataclass(frozen=True)
class Allow:
    names: frozenset[str]
    networks: tuple[IPNetwork, ...]

    @classmethod
    def parse(cls, entries: Collection[str]) -> Allow:
        if isinstance(entries, str):
            raise TypeError(f"allow_hosts takes a collection of host names or networks, not the string {entries!r}")
        names: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in entries:
            try:
                networks.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError:
                names.add(normal_host(entry))
        return cls(frozenset(names), tuple(networks))

    def covers(self, ip: IPAddress) -> bool:
        return any(ip in network for network in self.networks)


@dataclass(frozen=True)
class Target:
    url: httpx.URL  # as given, without fragment
    host: str  # ASCII, lower case, no brackets, no trailing dot
    addresses: tuple[IPAddress, ...]  # all checked; the request goes to the first


def check_url(url: str, *, allow_hosts: Collection[str] = ()) -> list[IPAddress]:
    """:func:`acheck_url`, for code that runs no event loop."""
    return asyncio.run(acheck_url(url, allow_hosts=allow_hosts))


async def acheck_url(url: str, *, allow_hosts: Collection[str] = ()) -> list[IPAddress]:
    """Resolve the host of ``url`` once and return its addresses, every one of them safe to fetch.

    Raises :class:`UnsafeUrl` for a refused URL or a name that does not exist, and
    :class:`FetchFailed` when name resolution fails for now. Makes no connection.
    """
    return list((await check_target(parse_url(url), Allow.parse(allow_hosts))).addresses)


def parse_url(url: str | httpx.URL) -> httpx.URL:
    text = str(url)
    if len(text) > MAX_URL_CHARS:
        raise UnsafeUrl(f"the URL is {len(text)} characters long, over the {MAX_URL_CHARS} allowed")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise UnsafeUrl(f"{show_url(text)} is not a valid URL: {exc}") from None
    if parsed.scheme not in SCHEMES:
        scheme = f"{parsed.scheme}:" if parsed.scheme else "a URL without scheme"
        raise UnsafeUrl(f"{show_url(text)}: only http and https URLs are fetched, not {scheme}")
    if not normal_host(parsed.raw_host.decode("ascii")):
        raise UnsafeUrl(f"{show_url(text)} has no host")
    if parsed.userinfo:
        raise UnsafeUrl(f"{show_url(parsed.copy_with(username=None, password=None))}: credentials in URLs are refused")
    if parsed.port is not None and not 1 <= parsed.port <= 65535:
        raise UnsafeUrl(f"{show_url(text)}: port {parsed.port} is not between 1 and 65535")
    return parsed.copy_with(fragment=None)


async def check_target(url: httpx.URL, allow: Allow) -> Target:
    host = normal_host(url.raw_host.decode("ascii"))
    port = url.port or (443 if url.scheme == "https" else 80)
    addresses = await _resolve(host, port)
    named = host in allow.names
    for ip in addresses:
        reason = _refusal(ip, allow, named=named)
        if reason is not None:
            where = str(ip) if ip_literal(host) else f"{host} resolves to {ip}, which"
            raise UnsafeUrl(f"{show_url(url)}: {where} is {reason}; only public addresses are fetched")
    return Target(url=url, host=host, addresses=addresses)


async def _resolve(host: str, port: int) -> tuple[IPAddress, ...]:
    literal = ip_literal(host)
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


def _refusal(ip: IPAddress, allow: Allow, *, named: bool) -> str | None:
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


def ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def normal_host(host: str) -> str:
    return host.strip().lower().rstrip(".")


def show_url(url: str | httpx.URL, limit: int = 200) -> str:
    """The URL for a message: credentials would already have been refused; long ones are cut."""
    text = str(url)
    return text if len(text) <= limit else text[: limit - 1] + "…"
