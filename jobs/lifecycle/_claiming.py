"""queued → running: the claim, and the lease a worker renews while it runs."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from jobs.db import planned_afresh, writing
from jobs.pgvalues import int_array, uuid_array
from jobs.tables import Job


@dataclass(frozen=True)
class Claimed:
    id: uuid.UUID
    attempt: int
    input: dict[str, Any]
    tenant_id: uuid.UUID
    tenant: str = ""  # the tenant's name, for metrics and logs
    waited_s: float = 0.0  # created → claimed, on PostgreSQL's clock
    follow_up: bool = True  # its finish writes more than its row (a webhook, a bulk run's bookkeeping)


# The claim's cost must not grow with the queue. Three things keep it at O(batch) whatever
# PostgreSQL's statistics say (a fresh table has none; a table analyzed while its queue was
# short says almost nothing is queued):
# - ``own`` compares ``status COLLATE "C"``, which the partial index of queued jobs does not
#   match, so the message's ids are looked up by primary key. With ``status = 'queued'`` the
#   planner scanned that whole index (every queued job) for the few ids, at each claim.
# - The UPDATE finds the rows the CTEs locked by their ctid (a TID scan). With ``id IN (…)``
#   it semi-joined every queued job against the claim: 17 ms per claim at 3,200 queued, and
#   with ``id = ANY(…)`` it chose a sequential scan of a table without statistics.
#   A row locked here cannot change before the UPDATE. One that another transaction changed
#   after this statement's snapshot but before the lock, still queued (the reconciler
#   touching a stale job as it publishes it again), may be locked in a version the UPDATE
#   cannot see: it stays queued for that transaction's own message. Nothing is claimed twice.
# - ``fair`` takes ``LIMIT (SELECT :fill_to)``, a limit the planner cannot read, so it plans for
#   the first rows of an ordered walk of ``jobs_queued_fair``. With the plain value, statistics
#   taken while the kind's queue held 20 rows made it read and sort all 3,000 queued for 32
#   (tests/integration/test_store.py, when the integration tests ran alone).
CLAIM_SQL = text(
    """
    WITH own AS (
        SELECT ctid, attempt FROM jobs
        WHERE id = ANY(CAST(:ids AS uuid[])) AND status COLLATE "C" = 'queued' AND kind = :kind
          AND (:fill_to = 0 OR attempt > 0)
          AND (attempt = 0 OR cardinality(CAST(:ids AS uuid[])) = 1)
        FOR UPDATE SKIP LOCKED
    ), fair AS (
        SELECT ctid FROM jobs
        WHERE kind = :kind AND status = 'queued' AND attempt = 0 AND :fill_to > 0
          AND NOT EXISTS (SELECT 1 FROM own)
        ORDER BY priority DESC, fair_vt
        LIMIT (SELECT CAST(:fill_to AS int)) FOR UPDATE SKIP LOCKED
    )
    UPDATE jobs SET
        status = 'running', attempt = jobs.attempt + 1, worker = :worker,
        started_at = now(), updated_at = now(), lease_expires_at = now() + make_interval(secs => :lease_s)
    WHERE jobs.ctid = ANY(ARRAY(SELECT ctid FROM own UNION ALL SELECT ctid FROM fair))
      AND jobs.status COLLATE "C" = 'queued'
    RETURNING jobs.id, jobs.attempt, jobs.input, jobs.tenant_id,
        (SELECT name FROM tenants WHERE tenants.id = jobs.tenant_id) AS tenant,
        EXTRACT(EPOCH FROM now() - jobs.created_at)::float8 AS waited_s,
        jobs.webhook_url IS NOT NULL OR jobs.batch_id IS NOT NULL AS follow_up
    """
)


def claim(
    session: Session, *, job_ids: Sequence[uuid.UUID], kind: str, worker: str, lease_s: float, fill_to: int = 0
) -> list[Claimed]:
    """Take up to ``fill_to`` queued jobs of the kind, most urgent first and, within a
    priority, in their fair order (jobs/fairness.py), in one statement; with ``fill_to`` 0,
    the still-queued jobs among ``job_ids``.

    A message is a wake-up, not an assignment: PostgreSQL already holds every accepted job,
    so a worker takes what is due instead of what its message names, and a tenant's 20,000
    queued jobs do not hold another tenant's hundred behind them. Every message's claim takes
    as many jobs as its own message names (or more), so all of them are taken; the messages
    of jobs claimed meanwhile find others. A retried job is claimed only by a message of its
    own (the reconciler publishes each one so) and alone: if it is what killed its last
    worker, it must not take innocent jobs' attempts down with it again. A message naming
    several jobs (Celery's redelivery of a bulk chunk after its pool process died) leaves
    those that lost an attempt to their own messages.
    """
    if fill_to > 0 and len(job_ids) > 1:  # only a one-id message may claim its job by id (a retried one)
        job_ids = []  # so the statement looks none up: a bulk chunk's 256 would be read for nothing
    values = {"ids": uuid_array(job_ids), "kind": kind, "worker": worker, "lease_s": lease_s,
              "fill_to": max(0, fill_to)}  # fmt: skip
    with planned_afresh(session):  # its best plan depends on the queue's size (jobs/db.py)
        rows = session.execute(CLAIM_SQL, values).all()
    return [Claimed(*r) for r in rows]  # RETURNING lists Claimed's fields in its order


def claim_jobs(
    sessions: sessionmaker[Session],
    *,
    job_ids: Sequence[uuid.UUID],
    kind: str,
    worker: str,
    lease_s: float,
    fill_to: int = 0,
) -> list[Claimed]:
    """:func:`claim` in a write of its own: one statement, committed on its own."""
    with writing(sessions, one_statement=True) as session:
        return claim(session, job_ids=job_ids, kind=kind, worker=worker, lease_s=lease_s, fill_to=fill_to)


def cancel_requested(session: Session, *, job_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    """Which of these running jobs a user has asked to cancel (polled while a job generates)."""
    rows = session.execute(
        select(Job.id).where(Job.id.in_(list(job_ids)), Job.cancel_requested_at.is_not(None))
    ).scalars()
    return set(rows)


def extend_leases(session: Session, *, job_ids: Sequence[uuid.UUID], attempts: Sequence[int], lease_s: float) -> int:
    """A worker's heartbeat for jobs it still runs (fenced by attempt). Returns how many held."""
    # status COLLATE "C": the jobs are found by primary key, not by the running jobs' index (_finishing.py)
    result = session.execute(
        text(
            """
            UPDATE jobs SET lease_expires_at = now() + make_interval(secs => :lease_s)
            FROM unnest(CAST(:ids AS uuid[]), CAST(:attempts AS int[])) AS v(id, attempt)
            WHERE jobs.id = v.id AND jobs.attempt = v.attempt AND jobs.status COLLATE "C" = 'running'
            """
        ),
        {"ids": uuid_array(job_ids), "attempts": int_array(attempts), "lease_s": lease_s},
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
