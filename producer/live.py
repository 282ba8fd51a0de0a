"""Readings taken at request time for operators: queue depth from Redis, workers from a
Celery ping, unfinished jobs from PostgreSQL. Cached for a few seconds, so a dashboard
that refreshes every two seconds and a Prometheus scrape do not hammer the services."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from sqlalchemy.orm import Session, sessionmaker

from jobs.kinds import KINDS
from jobs.queues import MAX_PRIORITY, queue_name
from jobs.redisconn import open_redis
from jobs.settings import Settings
from producer import ops_queries as ops
from producer.publish import Publisher

PRIORITY_STEPS = (0, 3, 6, 9)  # kombu's Redis priority steps (0 most urgent)
PRIORITY_SEPARATOR = "\x06\x16"  # kombu names a step's list <queue><separator><step>
CACHE_S = 2.0
PING_TIMEOUT_S = 1.0
REDIS_TIMEOUT_S = 1.0

T = TypeVar("T")


class Cached(Generic[T]):
    def __init__(self, read: Callable[[], T], *, ttl_s: float = CACHE_S) -> None:
        self.read, self.ttl_s = read, ttl_s
        self.value: T | None = None
        self.at = 0.0
        self.lock = threading.Lock()

    def get(self) -> T:
        with self.lock:
            if self.value is None or time.monotonic() - self.at > self.ttl_s:
                self.value, self.at = self.read(), time.monotonic()
            return self.value


class Live:
    def __init__(self, *, settings: Settings, sessions: sessionmaker[Session], publisher: Publisher) -> None:
        self.redis = open_redis(settings, timeout_s=REDIS_TIMEOUT_S)  # the Sentinel master, when so configured
        self._sessions = sessions
        self.publisher = publisher
        self.depth = Cached(self._queue_depth)
        self.workers = Cached(self._workers_online, ttl_s=5.0)
        self.unfinished = Cached(self._unfinished)
        self.tenants = Cached(self._tenant_work)

    def _queue_depth(self) -> dict[tuple[str, int], int]:
        """Messages waiting per (kind, priority), priority on mlq's scale (9 most urgent)."""
        with self.redis.pipeline() as pipe:
            keys = []
            for kind in sorted(KINDS):
                for step in PRIORITY_STEPS:
                    keys.append((kind, MAX_PRIORITY - step))
                    pipe.llen(queue_name(kind) + (f"{PRIORITY_SEPARATOR}{step}" if step else ""))
            return dict(zip(keys, (int(n) for n in pipe.execute()), strict=True))

    def _workers_online(self) -> list[str]:
        replies = self.publisher.app.control.ping(timeout=PING_TIMEOUT_S) or []
        return sorted(name for reply in replies for name in reply)

    def _unfinished(self) -> dict[tuple[str, str], int]:
        with self._sessions() as session:
            return ops.unfinished_counts(session)

    def _tenant_work(self) -> list[dict[str, Any]]:
        with self._sessions() as session:
            return ops.tenant_work(session)

    def close(self) -> None:
        self.redis.close()
