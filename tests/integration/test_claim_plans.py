"""A worker's claim stays an index walk as its queue grows from hundreds to 100,000 rows in one
connection's life: it is never prepared, so each is planned for its values (jobs/db.py
``planned_afresh``).

Prepared, PostgreSQL switched this very sequence of claims to a generic plan after five runs:
two sequential scans of ``jobs``, 90 ms a claim at 200,000 queued rows against 2 ms (found by
``bench soak``, where a bulk run drained 30 times slower than after a reconnect).

The statements that end or renew a claim's jobs find them by primary key, however many dead
entries the running jobs' index holds (jobs/lifecycle/_finishing.py)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, event, text
from sqlalchemy.orm import Session, sessionmaker

from jobs import lifecycle
from jobs.db import make_engine, make_sessionmaker
from jobs.migrate import upgrade
from tests.services import Services, fresh_database

KIND = "text-classification"
CLAIM = 256  # a bulk run's claim


@pytest.fixture
def engine(services: Services) -> Iterator[Engine]:
    with fresh_database(services.pg_admin_url) as url:
        upgrade(url)
        # a URL's own options are kept beside mlq's: statement_timeout stands for any of them
        engine = make_engine(url + "?options=-c%20statement_timeout%3D123456", pool_size=1)
        try:
            yield engine
        finally:
            engine.dispose()


def queue(engine: Engine, tenant: uuid.UUID, n: int, *, priority: int) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                """
                INSERT INTO jobs (id, tenant_id, kind, model, profile, status, priority, input, metadata,
                                  attempt, max_attempts, fair_vt)
                SELECT gen_random_uuid(), :tenant, :kind, 'm', 'default', 'queued', :priority,
                       '{"text": "x"}', '{}', 0, 3, g
                FROM generate_series(1, :n) g
                """
            ),
            {"tenant": tenant, "kind": KIND, "priority": priority, "n": n},
        )


def claim(sessions: sessionmaker[Session], fill_to: int) -> int:
    taken = lifecycle.claim_jobs(sessions, job_ids=[uuid.uuid4()], kind=KIND, worker="w", lease_s=30, fill_to=fill_to)
    return len(taken)


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


def test_the_claim_is_planned_for_its_values_as_the_queue_grows(engine: Engine) -> None:
    tenant = uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO tenants (id, name, webhook_secret) VALUES (:id, 'plans', 's')"), {"id": tenant})
    sessions = make_sessionmaker(engine)  # pool_size 1: every claim on one connection
    for _ in range(40):  # interactive traffic: a small queue, claimed as it comes
        queue(engine, tenant, 80, priority=5)
        assert [claim(sessions, 16) for _ in range(5)] == [16, 16, 16, 16, 16]
    queue(engine, tenant, 100_000, priority=2)  # then a bulk run lands
    assert [claim(sessions, 32) for _ in range(3)] == [32, 32, 32]

    with sessions.begin() as session:
        prepared = session.execute(text("SELECT statement FROM pg_prepared_statements")).scalars().all()
        assert not [p for p in prepared if "WITH own AS" in p]  # 203 claims, none prepared
        params = {"ids": f"{{{uuid.uuid4()}}}", "kind": KIND, "fill_to": 32, "worker": "w", "lease_s": 30}
        [[explained]] = session.execute(
            text(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {lifecycle.CLAIM_SQL.text}"), params
        ).one()
        pages = session.execute(text("SELECT pg_relation_size('jobs') / current_setting('block_size')::int")).scalar()
    plan = explained[0]["Plan"] if isinstance(explained, list) else explained["Plan"]
    scans = {(n["Node Type"], n.get("Relation Name")) for n in nodes(plan)}
    assert ("Seq Scan", "jobs") not in scans, scans
    assert plan["Actual Rows"] == 32
    assert plan["Shared Hit Blocks"] + plan.get("Shared Read Blocks", 0) < pages / 2, (plan, pages)


def test_only_the_reconciler_plans_every_statement(engine: Engine, services: Services) -> None:
    """A worker's and the API's other statements keep their prepared plans (planning each cost
    single jobs ~10 %); the reconciler's few statements a second plan afresh. A URL's own
    options are kept beside it."""
    with engine.connect() as conn:
        assert conn.execute(text("SHOW plan_cache_mode")).scalar() == "auto"
        assert conn.execute(text("SHOW statement_timeout")).scalar() == "123456ms"
    url = engine.url.render_as_string(hide_password=False) + "?options=-c%20statement_timeout%3D123456"
    reconciler = make_engine(url, pool_size=1, plan_each_statement=True)
    try:
        with reconciler.connect() as conn:
            assert conn.execute(text("SHOW plan_cache_mode")).scalar() == "force_custom_plan"
            assert conn.execute(text("SHOW statement_timeout")).scalar() == "123456ms"
    finally:
        reconciler.dispose()


def statement_of(engine: Engine, call: Callable[[Session], object]) -> tuple[str, Any]:
    """The one statement on ``jobs`` that ``call`` sends, as sent (its effect rolled back)."""
    sent: list[tuple[str, Any]] = []

    def grab(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if "UPDATE jobs" in statement:
            sent.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", grab)
    try:
        with Session(engine) as session:
            call(session)
            session.rollback()
    finally:
        event.remove(engine, "before_cursor_execute", grab)
    [found] = sent
    return found


@pytest.mark.parametrize("step", ["finish", "give_back", "extend_leases"])
def test_ending_or_renewing_a_claim_reads_its_rows_not_the_running_index(engine: Engine, step: str) -> None:
    """Finished jobs leave dead entries in the running jobs' partial index until a vacuum. The
    statements that end or renew a claim by id must find its rows by primary key: with
    ``status = 'running'`` matching that index, finishing 256 jobs read every entry it held
    (31,000 in bench fairness, a quarter of a bulk run's PostgreSQL time)."""
    tenant = uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE jobs SET (autovacuum_enabled = false)"))  # the dead entries stay
        conn.execute(text("INSERT INTO tenants (id, name, webhook_secret) VALUES (:id, 'plans', 's')"), {"id": tenant})
    queue(engine, tenant, 40 * CLAIM, priority=2)
    sessions = make_sessionmaker(engine)
    for _ in range(39):  # 9,984 jobs claimed and finished
        with sessions.begin() as session:
            taken = lifecycle.claim(session, job_ids=[], kind=KIND, worker="w", lease_s=30, fill_to=CLAIM)
            lifecycle.finish(session, outcomes=[lifecycle.Outcome(c.id, c.attempt, {"ok": 1}) for c in taken])
    with sessions.begin() as session:
        running = lifecycle.claim(session, job_ids=[], kind=KIND, worker="w", lease_s=30, fill_to=CLAIM)
    ids, attempts = [c.id for c in running], [c.attempt for c in running]
    outcomes = [lifecycle.Outcome(c.id, c.attempt, {"ok": 1}) for c in running]
    calls: dict[str, Callable[[Session], object]] = {
        "finish": lambda s: lifecycle.finish(s, outcomes=outcomes),
        "give_back": lambda s: lifecycle.give_back(s, job_ids=ids, attempts=attempts, reason="test"),
        "extend_leases": lambda s: lifecycle.extend_leases(s, job_ids=ids, attempts=attempts, lease_s=30),
    }
    statement, parameters = statement_of(engine, calls[step])
    with engine.connect() as conn:
        [[explained]] = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {statement}", parameters).all()
        conn.rollback()
    plan = explained[0]["Plan"] if isinstance(explained, list) else explained["Plan"]
    updated = next(n for n in nodes(plan) if n.get("Operation") == "Update")
    assert updated["Actual Rows"] == CLAIM or step == "extend_leases"  # UPDATE without RETURNING counts none
    scans = [
        n for n in nodes(plan) if n.get("Relation Name") == "jobs" or str(n.get("Index Name", "")).startswith("jobs")
    ]
    assert scans
    assert all(n.get("Index Name") != "jobs_running_lease" for n in scans), scans
    assert max(n["Actual Rows"] * n["Actual Loops"] for n in scans) <= CLAIM, scans
