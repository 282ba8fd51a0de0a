"""The reconciler on the real PostgreSQL and Redis: expired leases, dead letters, lost wake-ups."""

from __future__ import annotations

import base64
import json
import logging
import uuid

import pytest
import redis
from celery import Celery
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from jobs import keys, lifecycle, reconcile, store
from jobs.broker import celery_config
from jobs.db import make_engine
from jobs.modelsfile import load_models_file
from jobs.settings import Settings
from tests.services import Services, fresh_redis_db
from workers.reconciler import Reconciler, warn_if_autovacuum_is_off


def queued_job(sessions: sessionmaker[Session], *, max_attempts: int = 3) -> uuid.UUID:
    with sessions.begin() as session:
        tenant = keys.ensure_tenant(session, name="reconciler-tests")
        job, _ = store.insert_job(session, tenant_id=tenant, job=store.NewJob(
            kind="text2text-generation", model="m", profile="demo", input={"text": "x"}, priority=5, metadata={},
            max_attempts=max_attempts))  # fmt: skip
        return job.id


def claim_and_expire(sessions: sessionmaker[Session], job_id: uuid.UUID) -> None:
    with sessions.begin() as session:
        [claimed] = lifecycle.claim(
            session, job_ids=[job_id], kind="text2text-generation", worker="dead-worker", lease_s=30
        )
        session.execute(
            text("UPDATE jobs SET lease_expires_at = now() - interval '1 second' WHERE id = :id"), {"id": claimed.id}
        )


def row(sessions: sessionmaker[Session], job_id: uuid.UUID) -> dict[str, object]:
    with sessions() as session:
        found = (
            session.execute(
                text("SELECT status, attempt, error_code, error_message, history FROM jobs WHERE id = :id"),
                {"id": job_id},
            )
            .mappings()
            .one()
        )
        return dict(found)


def test_a_cancel_asked_while_it_ran_holds_when_its_worker_dies(own_sessions: sessionmaker[Session]) -> None:
    """A dead worker's job goes back to the queue, unless its cancel was asked: then it ends
    cancelled (before, it ran again and ignored the request, or failed with
    max_attempts_exceeded on its last attempt)."""
    job_id = queued_job(own_sessions, max_attempts=3)
    claim_and_expire(own_sessions, job_id)
    with own_sessions.begin() as session:
        session.execute(text("UPDATE jobs SET cancel_requested_at = now() WHERE id = :id"), {"id": job_id})
    with own_sessions.begin() as session:  # other tests' expired leases are taken back too: all of them
        taken = lifecycle.expired_leases(session, limit=100_000)
    assert job_id in taken.cancelled and job_id not in [w.id for w in taken.requeued]
    final = row(own_sessions, job_id)
    assert final["status"] == "cancelled" and final["error_code"] is None and final["attempt"] == 1
    assert [h["reason"] for h in final["history"]] == ["lease expired"]  # type: ignore[union-attr]


def test_expired_lease_goes_back_to_queued_then_to_the_dead_letter(own_sessions: sessionmaker[Session]) -> None:
    job_id = queued_job(own_sessions, max_attempts=2)
    for attempt in (1, 2):
        claim_and_expire(own_sessions, job_id)
        with own_sessions.begin() as session:
            taken = lifecycle.expired_leases(session, limit=100)
        assert job_id in ([w.id for w in taken.requeued] if attempt == 1 else taken.dead)
    final = row(own_sessions, job_id)
    assert final["status"] == "failed" and final["error_code"] == "max_attempts_exceeded"
    assert "gave up after 2 attempts" in str(final["error_message"])
    history = final["history"]
    assert isinstance(history, list) and [h["attempt"] for h in history] == [1, 2]
    assert all(h["worker"] == "dead-worker" and h["reason"] == "lease expired" for h in history)


def test_heartbeat_keeps_a_live_lease(own_sessions: sessionmaker[Session]) -> None:
    job_id = queued_job(own_sessions)
    claim_and_expire(own_sessions, job_id)
    with own_sessions.begin() as session:
        assert lifecycle.extend_leases(session, job_ids=[job_id], attempts=[1], lease_s=30) == 1
        assert lifecycle.extend_leases(session, job_ids=[job_id], attempts=[7], lease_s=30) == 0  # fenced
        taken = lifecycle.expired_leases(session, limit=100)
    assert job_id not in [w.id for w in taken.requeued] and row(own_sessions, job_id)["status"] == "running"


def test_lost_wake_ups_are_republished_only_when_the_queue_is_empty(
    own_sessions: sessionmaker[Session], own_settings: Settings, services: Services
) -> None:
    with fresh_redis_db(services.redis_base_url) as redis_url:
        app = Celery("test-reconciler")
        app.conf.update(celery_config(Settings(**{**own_settings.model_dump(), "redis_url": redis_url})))
        engine = make_engine(own_settings.require_database_url(), pool_size=1)
        reconciler = Reconciler(engine=engine, app=app, models=load_models_file("demo"), requeue_after_s=0)
        job_id = queued_job(own_sessions)  # committed, never published: a crash between commit and publish
        counted_before = REGISTRY.get_sample_value("mlq_reconciler_actions_total", {"action": "republished"}) or 0
        first = reconciler.run_once()
        assert first.republished >= 1 and reconciler.queue_size("text2text-generation") >= 1
        counted = REGISTRY.get_sample_value("mlq_reconciler_actions_total", {"action": "republished"})
        assert counted == counted_before + first.republished  # what /metrics of `mlq reconcile` shows
        client = redis.Redis.from_url(redis_url)
        messages = [json.loads(m) for k in client.keys("mlq.text2text-generation*") for m in client.lrange(k, 0, -1)]
        published = {i for m in messages for i in json.loads(base64.b64decode(m["body"]))[0][0]}
        assert str(job_id) in published
        second = reconciler.run_once()  # its queue now holds a message: nothing republished twice
        assert second.republished == 0
        engine.dispose()
        app.close()


def test_a_released_job_waits_an_exponential_backoff_then_is_due(own_sessions: sessionmaker[Session]) -> None:
    job_id = queued_job(own_sessions, max_attempts=4)
    waits_s = []
    for attempt in (1, 2, 3):
        with own_sessions.begin() as session:
            [claimed] = lifecycle.claim(session, job_ids=[job_id], kind="text2text-generation", worker="w", lease_s=30)
            assert claimed.attempt == attempt
            lifecycle.give_back(session, job_ids=[job_id], attempts=[attempt], reason="out_of_memory: try again")
            waits_s.append(
                session.execute(
                    text("SELECT EXTRACT(EPOCH FROM retry_at - now()) FROM jobs WHERE id = :id"), {"id": job_id}
                ).scalar_one()
            )
            assert reconcile.due_retries(session, limit=100) == []  # not yet due
            stale = reconcile.stale_queued(session, kinds=["text2text-generation"], older_than_s=0, limit=100)
            assert job_id not in [w.id for w in stale]  # nor republished as a lost wake-up
            session.execute(text("UPDATE jobs SET retry_at = now() - interval '1 ms' WHERE id = :id"), {"id": job_id})
            [due] = reconcile.due_retries(session, limit=100)
        assert (due.id, due.retried) == (job_id, True)
    # base 2 s doubling per attempt, each times 0.5-1.5
    for wait_s, base_s in zip(waits_s, (2, 4, 8), strict=True):
        assert 0.5 * base_s <= float(wait_s) <= 1.5 * base_s
    assert row(own_sessions, job_id)["status"] == "queued"


def test_the_reconciler_warns_when_autovacuum_is_off(own_settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    """It says so when it takes the lock; this repository's CI server runs with it off."""
    engine = make_engine(own_settings.require_database_url(), pool_size=1)
    try:
        with engine.connect() as conn, caplog.at_level(logging.WARNING, logger="mlq.reconciler"):
            server_says = conn.execute(text("SHOW autovacuum")).scalar()
            on = warn_if_autovacuum_is_off(conn)
    finally:
        engine.dispose()
    assert on == (server_says == "on")
    warned = [r.getMessage() for r in caplog.records if "autovacuum is off" in r.getMessage()]
    assert len(warned) == (0 if on else 1)
