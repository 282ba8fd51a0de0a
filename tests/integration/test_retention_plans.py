"""The prune plans each of its statements once per prune, on a connection of its own, and that
one plan walks the tenant's index from the cursor (jobs/retention.py ``PRUNE_CONNECTION``).

Planned afresh for every transaction, as the reconciler plans, the jobs' statement cost 3.5 ms
of PostgreSQL's CPU in a 5 ms transaction of 50 rows, and submits beside the prune waited for
it (bench retention: p99 x1.25 while pruning, against x1.2 the target)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql
from sqlalchemy import Engine, text

from jobs.artifacts import LocalArtifactStore
from jobs.db import make_sessionmaker
from jobs.migrate import upgrade
from jobs.retention import SINGLE_JOBS, Pruner, prune_engine
from tests.integration.test_claim_plans import nodes
from tests.integration.test_retention import add_jobs, tenant
from tests.services import Services, fresh_database


@pytest.fixture
def engine(services: Services) -> Iterator[Engine]:
    with fresh_database(services.pg_admin_url) as url:
        upgrade(url)
        engine = prune_engine(url)
        try:
            yield engine
        finally:
            engine.dispose()


def single_jobs_plan(engine: Engine, tenant_id: uuid.UUID) -> tuple[Any, dict[str, Any]]:
    """The prepared jobs' statement of the prune's connection, and its plan as it runs now."""
    with engine.connect() as conn:  # pool_size 1: the connection the prune used
        prepared = conn.execute(
            text("SELECT name, statement, generic_plans, custom_plans FROM pg_prepared_statements")
        ).all()
        [mine] = [p for p in prepared if "DELETE FROM artifacts" in p.statement and "tenant_id = $1" in p.statement]
        names = list(dict.fromkeys(re.findall(r"(?<!:):(\w+)", SINGLE_JOBS.text)))  # psycopg's $1, $2, ...
        values = {"tenant": tenant_id, "cutoff": datetime.now(UTC) - timedelta(days=30), "n": 50,
                  "after_at": datetime(1, 1, 1, tzinfo=UTC), "after_id": uuid.UUID(int=0)}  # fmt: skip
        driver = conn.connection.driver_connection
        assert driver is not None
        explain = sql.SQL("EXPLAIN (FORMAT JSON) EXECUTE {}({})").format(
            sql.Identifier(mine.name), sql.SQL(", ").join(sql.Literal(values[n]) for n in names)
        )
        with driver.cursor() as cursor:
            cursor.execute(explain.as_string(driver))
            [[explained]] = cursor.fetchall()
        conn.rollback()
    return mine, explained[0]["Plan"]


def test_the_prune_plans_each_statement_once_and_walks_the_tenants_index(engine: Engine, tmp_path: Path) -> None:
    with engine.connect() as conn:
        shown = [conn.execute(text(f"SHOW {name}")).scalar() for name in ("plan_cache_mode", "synchronous_commit")]
    assert shown == ["force_generic_plan", "on"]  # its files leave the store once its commits are on disk
    sessions = make_sessionmaker(engine)
    with sessions.begin() as session:  # no ANALYZE behind the test's back (jobs: every 10,000 rows changed)
        session.execute(text("ALTER TABLE jobs SET (autovacuum_enabled = false)"))
    t = tenant(sessions, "plans")
    pruner = Pruner(sessions, artifacts=LocalArtifactStore(tmp_path), retention_days=30, batch_rows=50)

    # A first prune while the table is small (a new deployment): its plans are made for 400 rows.
    add_jobs(sessions, t, n=400)
    assert pruner.prune().jobs == 400
    # A month later the table holds 20,000 finished jobs, with no ANALYZE since (autovacuum off).
    add_jobs(sessions, t, n=20_000)
    kept = add_jobs(sessions, t, n=100, age_days=2)
    done = pruner.prune()
    # 400 full transactions of jobs, one that found their end, one that found no unused upload
    assert (done.jobs, done.transactions) == (20_000, 402)

    mine, plan = single_jobs_plan(engine, t)
    assert mine.custom_plans == 0 and mine.generic_plans >= 395, mine  # one plan, made once per prune
    scans = {(n["Node Type"], n.get("Relation Name"), n.get("Index Name")) for n in nodes(plan)}
    assert ("Index Scan", "jobs", "jobs_tenant_created") in scans, scans
    assert not [s for s in scans if s[0] == "Seq Scan" and s[1] == "jobs"], scans
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM jobs")).scalar() == len(kept)
