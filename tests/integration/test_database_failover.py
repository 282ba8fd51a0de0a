"""The pieces of a PostgreSQL failover on the real server (the whole of one, with a standby
promoted under load, is tests/faults/test_postgres_failover.py): a multi-host
``MLQ_DATABASE_URL`` passes a host that is down, and a reconciler back after losing PostgreSQL
leaves expired leases to their live workers for a lease."""

from __future__ import annotations

import time

import psycopg
from celery import Celery
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from jobs import lifecycle
from jobs.broker import celery_config
from jobs.db import libpq_url, make_engine
from jobs.migrate import upgrade
from jobs.modelsfile import load_models_file
from jobs.settings import Settings
from mlq.embedded import free_port
from tests.integration.test_reconciler import claim_and_expire, queued_job, row
from tests.services import Services, fresh_redis_db
from workers.reconciler import Reconciler

GRACE_S = 1.0


def behind_a_dead_host(database_url: str) -> str:
    """The test database, named second after a host nobody listens on."""
    url = make_url(database_url)
    second = url.host or str(url.query["host"])  # a TCP host, or the embedded server's socket folder
    query = {"host": f"127.0.0.1,{second}", "port": f"{free_port()},{url.port or ''}",
             "target_session_attrs": "read-write"}  # fmt: skip
    return libpq_url(url.set(host=None, port=None, query=query).render_as_string(hide_password=False))


def test_a_multi_host_url_passes_a_host_that_is_down(own_settings: Settings) -> None:
    url = behind_a_dead_host(own_settings.require_database_url())
    upgrade(url)  # the migrations take it (the database is at head: nothing to do)
    engine = make_engine(url, pool_size=1)
    try:
        with engine.connect() as conn:
            database = make_url(own_settings.require_database_url()).database
            assert conn.execute(text("SELECT current_database()")).scalar() == database
    finally:
        engine.dispose()
    with psycopg.connect(libpq_url(url)) as conn:  # as the API's LISTEN connection opens it
        assert conn.execute("SELECT NOT pg_is_in_recovery()").fetchone() == (True,)


def test_a_reconciler_back_after_losing_postgresql_waits_a_lease_before_taking_leases_back(
    own_sessions: sessionmaker[Session], own_settings: Settings, services: Services
) -> None:
    """Its workers lost PostgreSQL too, and could not renew: the one still alive renews within
    the grace and keeps its job; the dead one's job is taken back after it."""
    alive, dead = queued_job(own_sessions), queued_job(own_sessions)
    claim_and_expire(own_sessions, alive)
    claim_and_expire(own_sessions, dead)
    with fresh_redis_db(services.redis_base_url) as redis_url:
        app = Celery("test-failover")
        app.conf.update(celery_config(Settings(**{**own_settings.model_dump(), "redis_url": redis_url})))
        engine = make_engine(own_settings.require_database_url(), pool_size=1)
        reconciler = Reconciler(
            engine=engine, app=app, models=load_models_file("demo"), requeue_after_s=3600, lease_grace_s=GRACE_S
        )
        try:
            reconciler.became_active()
            assert reconciler.run_once().requeued == 0  # both expired, within the grace
            with own_sessions.begin() as session:  # the live worker's renewal, its first since PostgreSQL came back
                assert lifecycle.extend_leases(session, job_ids=[alive], attempts=[1], lease_s=30) == 1
            time.sleep(GRACE_S)
            assert reconciler.run_once().requeued >= 1
        finally:
            engine.dispose()
            app.close()
    assert row(own_sessions, alive)["status"] == "running"
    assert (row(own_sessions, dead)["status"], row(own_sessions, dead)["attempt"]) == ("queued", 1)
