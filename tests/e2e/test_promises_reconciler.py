"""The README's promises about the reconciler, with real `mlq reconcile` processes on a
PostgreSQL and a Redis database of their own: one is active per deployment under the
advisory lock, the others wait as standbys and take over when it dies; its /metrics over
HTTP; a job given back after a transient error waits a backoff capped at 5 minutes."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from jobs import keys, lifecycle, store
from jobs.queues import queue_name
from jobs.settings import Settings
from mlq.embedded import free_port
from tests.conftest import Proc, process_env, sessions_of, stack_of_its_own, wait_http
from tests.services import Services
from workers.reconciler import LOCK_ID

ACTIVE = "this reconciler is active"  # what the one holding the lock logs once


@pytest.fixture(scope="module")
def mine(settings: Settings, services: Services) -> Iterator[Settings]:
    # rounds every half second, and a queued job is "lost" once it has waited that long
    with stack_of_its_own(settings, services, reconcile_every_s=0.5, requeue_after_s=0.5) as own:
        yield own


@pytest.fixture(scope="module")
def sessions(mine: Settings) -> Iterator[sessionmaker[Session]]:
    with sessions_of(mine) as made:
        yield made


def queued_job(sessions: sessionmaker[Session], *, kind: str, max_attempts: int = 3) -> uuid.UUID:
    """A job committed and never published: a crash between commit and publish."""
    with sessions.begin() as session:
        tenant = keys.ensure_tenant(session, name="reconciler-promises")
        job, _ = store.insert_job(session, tenant_id=tenant, job=store.NewJob(
            kind=kind, model="m", profile="demo", input={"text": "x"}, priority=5, metadata={},
            max_attempts=max_attempts))  # fmt: skip
        return job.id


def published(redis_url: str, kind: str) -> int:
    client = redis.Redis.from_url(redis_url)
    try:
        return sum(int(client.llen(key)) for key in client.keys(f"{queue_name(kind)}*"))
    finally:
        client.close()


def republished_count(metrics_url: str) -> float:
    """``mlq_reconciler_actions_total{action="republished"}`` read over HTTP (0 before any)."""
    page = httpx.get(metrics_url, timeout=10).text
    return sum(
        s.value
        for family in text_string_to_metric_families(page)
        for s in family.samples
        if s.name == "mlq_reconciler_actions_total" and s.labels.get("action") == "republished"
    )


def until(condition: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s}s: {what}"
        time.sleep(0.1)


def lock_holders(sessions: sessionmaker[Session]) -> int:
    """Sessions of this database holding the reconciler's advisory lock."""
    with sessions() as session:
        return int(
            session.execute(
                text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objid = :id "
                    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                ),
                {"id": LOCK_ID},
            ).scalar_one()
        )


def start_reconciler(mine: Settings, name: str) -> tuple[Proc, str]:
    port = free_port()
    proc = Proc(name, ["reconcile"], process_env(mine, MLQ_RECONCILER_METRICS_PORT=str(port)))
    url = f"http://127.0.0.1:{port}/metrics"
    wait_http(url, proc)  # the metrics endpoint answers on the standby too
    return proc, url


def test_one_reconciler_acts_the_other_waits_and_takes_over_when_it_is_killed(
    mine: Settings, sessions: sessionmaker[Session]
) -> None:
    first, first_metrics = start_reconciler(mine, "reconciler-first")
    second = None
    try:
        until(lambda: ACTIVE in first.tail(200), "the first reconciler took the lock")
        second, second_metrics = start_reconciler(mine, "reconciler-second")
        queued_job(sessions, kind="text2text-generation")
        until(lambda: published(mine.require_redis_url(), "text2text-generation") == 1, "the lost job republished")
        time.sleep(2)  # four more rounds: the standby has had every chance to act
        assert republished_count(first_metrics) == 1
        assert republished_count(second_metrics) == 0, "the standby acted"
        assert ACTIVE not in second.tail(200) and second.alive()
        assert lock_holders(sessions) == 1

        os.kill(first.popen.pid, signal.SIGKILL)
        first.popen.wait(timeout=10)
        until(lambda: ACTIVE in second.tail(200), "the standby took over", timeout_s=15)
        queued_job(sessions, kind="embedding")  # lost after the first one died
        until(lambda: published(mine.require_redis_url(), "embedding") == 1, "the standby republished it")
        assert republished_count(second_metrics) == 1
        assert lock_holders(sessions) == 1
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_a_retry_backoff_doubles_from_2_s_and_is_capped_at_5_minutes(sessions: sessionmaker[Session]) -> None:
    """Through the function workers call on a transient error (``lifecycle.give_back``, its
    defaults), on the real PostgreSQL: attempt n waits min(300, 2 * 2^(n-1)) s times 0.5-1.5."""
    job_id = queued_job(sessions, kind="text2text-generation", max_attempts=40)
    waits_s = []
    for attempt in range(1, 31):
        with sessions.begin() as session:
            [claimed] = lifecycle.claim(session, job_ids=[job_id], kind="text2text-generation", worker="w", lease_s=30)
            assert claimed.attempt == attempt
            lifecycle.give_back(session, job_ids=[job_id], attempts=[attempt], reason="out_of_memory: try again")
            waits_s.append(
                float(
                    session.execute(
                        text("SELECT EXTRACT(EPOCH FROM retry_at - now()) FROM jobs WHERE id = :id"), {"id": job_id}
                    ).scalar_one()
                )
            )
    for attempt, wait_s in enumerate(waits_s, start=1):
        base_s = min(300.0, 2.0 * 2 ** (attempt - 1))
        assert 0.5 * base_s <= wait_s <= 1.5 * base_s, (attempt, wait_s)
    capped = waits_s[8:]  # from the ninth attempt (2 s x 2^8 = 512 s) the cap holds
    assert all(150 <= w <= 450 for w in capped), capped
    assert max(waits_s) <= 450  # 30 attempts in: uncapped, the last would wait 2^30 s (34 years)
