"""Per-tenant limits on submission: jobs per minute (counted in Redis, shared by every API
process) and active jobs per kind (counted in PostgreSQL). Both answer 429 with Retry-After.

The minute counter fails open: with Redis down the API still accepts jobs (they are durable
in PostgreSQL and the reconciler publishes them later), so a broker outage is not an outage
of submission.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import redis

from jobs.redisconn import open_redis
from jobs.settings import Settings

log = logging.getLogger("mlq.ratelimit")

WINDOW_S = 60
ACTIVE_RETRY_AFTER_S = 5  # a quota on active jobs frees up as jobs finish: look again soon
RESERVE_SHARE = 100  # minute tokens are taken from Redis in blocks of 1/100th of the limit
REDIS_TIMEOUT_S = 0.5  # a slow Redis costs a submission this much at most, then the limit fails open
ACTIVE_RECOUNT_S = 1.0  # active jobs are counted in PostgreSQL at most this often per tenant and kind


@dataclass(frozen=True)
class Limits:
    jobs_per_minute: int  # 0: no limit
    max_active_jobs_per_kind: int  # queued + running single jobs of one kind; 0: no limit


class RateLimiter:
    """A fixed one-minute window per tenant: INCRBY on ``mlq:rate:<tenant>:<minute>``."""

    def __init__(self, redis_from: Settings | str) -> None:
        """``redis_from``: the settings (MLQ_REDIS_URL, a Sentinel one included), or a URL."""
        self.client = open_redis(redis_from, timeout_s=REDIS_TIMEOUT_S)
        self._active: dict[tuple[uuid.UUID, str], tuple[float, int]] = {}
        self._reserved: dict[uuid.UUID, tuple[int, int]] = {}  # tenant -> (window, tokens taken, unspent)
        self._lock = threading.Lock()

    def active(self, *, tenant_id: uuid.UUID, kind: str, count: Callable[[], int]) -> int:
        """The tenant's active jobs of ``kind``: counted by ``count`` (PostgreSQL) at most once a
        second, plus what this process accepted since. A quota can overshoot by what other API
        processes accept within that second; it is a guard against floods, not an invoice."""
        key = (tenant_id, kind)
        with self._lock:
            found = self._active.get(key)
        if found is None or time.monotonic() - found[0] > ACTIVE_RECOUNT_S:
            found = (time.monotonic(), count())
            with self._lock:
                self._active[key] = found
        return found[1]

    def accepted(self, *, tenant_id: uuid.UUID, kind: str) -> None:
        """One more active job of the tenant's ``kind`` since the last count."""
        key = (tenant_id, kind)
        with self._lock:
            found = self._active.get(key)
            if found is not None:
                self._active[key] = (found[0], found[1] + 1)

    def admit(self, *, tenant_id: uuid.UUID, jobs: int, per_minute: int) -> tuple[int, int]:
        """Count up to ``jobs`` against the tenant's minute. Returns how many fit (the first ones
        of the group; the rest are not counted) and the seconds until the next window.

        Tokens are taken from Redis in blocks of 1/RESERVE_SHARE of the limit and spent here,
        so most groups need no round trip (one fewer on every job's path at idle). Every API
        process together still admits at most ``per_minute`` in a window; what a process
        reserved and did not spend, under 1 % of the limit, is lost with the window. Limits
        under RESERVE_SHARE are counted one job at a time, exactly as before."""
        if per_minute <= 0 or jobs <= 0:
            return jobs, 0
        now = time.time()
        window = int(now // WINDOW_S)
        retry_after_s = math.ceil((window + 1) * WINDOW_S - now)
        with self._lock:  # take what this process holds for the window
            held_window, held = self._reserved.get(tenant_id, (window, 0))
            held = held if held_window == window else 0
            if held >= jobs:
                self._reserved[tenant_id] = (window, held - jobs)
                return jobs, retry_after_s
            self._reserved[tenant_id] = (window, 0)
        block = max(jobs - held, per_minute // RESERVE_SHARE)
        key = f"mlq:rate:{tenant_id}:{window}"
        try:
            with self.client.pipeline() as pipe:
                pipe.incrby(key, block)
                pipe.expire(key, 2 * WINDOW_S)
                used = int(pipe.execute()[0])
            got = max(0, min(block, per_minute - (used - block)))
            if got < block:
                self.client.decrby(key, block - got)
        except redis.RedisError as exc:  # fail open: the job is durable without Redis
            log.warning("rate limit not checked for tenant %s: Redis unavailable (%s)", tenant_id, exc)
            return jobs, 0
        fit = min(jobs, held + got)
        with self._lock:  # keep the rest for the next groups of this window
            now_window, now_held = self._reserved.get(tenant_id, (window, 0))
            self._reserved[tenant_id] = (window, (now_held if now_window == window else 0) + held + got - fit)
        return fit, retry_after_s

    def close(self) -> None:
        self.client.close()
