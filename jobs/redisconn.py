"""Opening Redis from the settings, for every user of it: the Celery broker, the rate limiter,
the live gauges, Flower.

``MLQ_REDIS_URL`` is a plain ``redis://`` (or ``rediss://``) address, or kombu's Sentinel form,
one ``sentinel://`` address per sentinel joined by ``;``::

    sentinel://:pw@s1:26379;sentinel://:pw@s2:26379;sentinel://:pw@s3:26379/0

The credentials and database are the master's (kombu's meaning); the sentinels monitor it
under ``MLQ_REDIS_SENTINEL_MASTER`` and, when they have a password of their own, answer
``MLQ_REDIS_SENTINEL_PASSWORD``. A client of a Sentinel URL follows the master: each new
connection asks the sentinels where it is, and a connection to a master that was demoted or
died is dropped and made again to the one they promoted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import redis
from redis.sentinel import Sentinel

from jobs.errors import NotConfigured
from jobs.settings import Settings

SENTINEL_SCHEME = "sentinel"
SENTINEL_PORT = 26379  # a sentinel's port when its address names none (Redis's default)
DEFAULT_MASTER = str(Settings.model_fields["redis_sentinel_master"].default)


@dataclass(frozen=True)
class SentinelUrl:
    """What a ``sentinel://`` URL names: where the sentinels listen, and how to log in to the
    master they point at."""

    sentinels: tuple[tuple[str, int], ...]
    db: int = 0
    username: str | None = None
    password: str | None = None


def is_sentinel_url(url: str | None) -> bool:
    return bool(url) and str(url).strip().lower().startswith(f"{SENTINEL_SCHEME}://")


Login = tuple[str | None, str | None]  # username, password


def parse_sentinel_url(url: str) -> SentinelUrl:
    """The sentinels of ``url`` in order, and the master's database and credentials: named once
    (kombu reads them from the first address) or alike on every address that names them."""
    found = [_address(n, part) for n, part in enumerate((p.strip() for p in url.split(";") if p.strip()), start=1)]
    if not found:
        raise NotConfigured("MLQ_REDIS_URL names no sentinel")
    dbs = {db for _, db, _ in found if db is not None}
    logins = {login for _, _, login in found if login is not None}
    if len(dbs) > 1:
        raise NotConfigured(f"MLQ_REDIS_URL names databases {sorted(dbs)}: the master has one; name it once")
    if len(logins) > 1:
        raise NotConfigured("MLQ_REDIS_URL names different credentials: the master has one password; name it once")
    username, password = logins.pop() if logins else (None, None)
    return SentinelUrl(
        sentinels=tuple(host for host, _, _ in found), db=dbs.pop() if dbs else 0, username=username, password=password
    )


def _address(n: int, part: str) -> tuple[tuple[str, int], int | None, Login | None]:
    """One ``sentinel://`` address: its host and port, and the database and login it names."""
    where = f"MLQ_REDIS_URL, address {n}"  # never the address itself: it may hold the password
    split = urlsplit(part)
    if split.scheme.lower() != SENTINEL_SCHEME:
        raise NotConfigured(f"{where}: every address of a Sentinel URL starts with sentinel://")
    try:
        port = split.port or SENTINEL_PORT
    except ValueError:
        raise NotConfigured(f"{where}: the port is not a number from 1 to 65535") from None
    if not split.hostname:
        raise NotConfigured(f"{where}: no host (sentinel://:password@host:26379)")
    db = split.path.strip("/")
    if db and not db.isdigit():
        raise NotConfigured(f"{where}: the database is a number (…:26379/0), not {db!r}")
    login = None
    if split.username or split.password:
        login = (unquote(split.username or "") or None, unquote(split.password or "") or None)
    return (split.hostname, port), int(db) if db else None, login


def broker_url(url: str) -> str:
    """``url`` as kombu reads it: a plain URL as it is; a Sentinel one with the credentials and
    database on every address, since kombu takes them from the first and ignores the rest."""
    if not is_sentinel_url(url):
        return url
    parsed = parse_sentinel_url(url)
    login = ""
    if parsed.username or parsed.password:
        login = f"{quote(parsed.username or '', safe='')}:{quote(parsed.password or '', safe='')}@"
    return ";".join(
        f"{SENTINEL_SCHEME}://{login}{f'[{host}]' if ':' in host else host}:{port}/{parsed.db}"
        for host, port in parsed.sentinels
    )


def sentinel_kwargs(*, password: str | None, timeout_s: float) -> dict[str, Any]:
    """How to talk to the sentinels themselves: their timeouts, and their own password if any."""
    found: dict[str, Any] = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
    if password:
        found["password"] = password
    return found


def broker_transport_options(settings: Settings, *, timeout_s: float) -> dict[str, Any]:
    """What kombu's Sentinel transport needs beside the URL (nothing for a plain URL)."""
    if not is_sentinel_url(settings.require_redis_url()):
        return {}
    return {
        "master_name": settings.redis_sentinel_master,
        "sentinel_kwargs": sentinel_kwargs(password=settings.redis_sentinel_password, timeout_s=timeout_s),
    }


def open_redis(source: Settings | str, *, timeout_s: float) -> redis.Redis:
    """A client of the Redis that ``source`` names (the settings' MLQ_REDIS_URL, or a URL; a
    Sentinel URL given alone means the master named ``mymaster`` and sentinels without a password).
    Sockets time out after ``timeout_s``; nothing connects until the first command."""
    if isinstance(source, Settings):
        url, master, password = source.require_redis_url(), source.redis_sentinel_master, source.redis_sentinel_password
    else:
        url, master, password = source, DEFAULT_MASTER, None
    if not is_sentinel_url(url):
        return redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    parsed = parse_sentinel_url(url)
    sentinel = Sentinel(
        list(parsed.sentinels),
        sentinel_kwargs=sentinel_kwargs(password=password, timeout_s=timeout_s),
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        db=parsed.db,
        username=parsed.username,
        password=parsed.password,
    )
    return sentinel.master_for(master)
