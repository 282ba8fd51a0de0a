"""Store functions of the reconciler: find jobs whose wake-up was lost and take back
expired leases, recording each lost attempt in the job's history (the dead letter)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.orm import Session

from jobs.store import enqueue_webhooks, notify_finished


@dataclass(frozen=True)
class Waiting:
    id: uuid.UUID
    kind: str
    priority: int
    retried: bool = False  # it lost an attempt before: run it alone


def stale_queued(session: Session, *, kinds: Sequence[str], older_than_s: float, limit: int) -> list[Waiting]:
    """Queued jobs of ``kinds`` untouched for ``older_than_s``; touched now so the next round
    leaves them alone for as long again."""
    rows = session.execute(
        text(
            """
            UPDATE jobs SET updated_at = now()
            WHERE id IN (
                SELECT id FROM jobs
                WHERE status = 'queued' AND kind = ANY(CAST(:kinds AS text[]))
                  AND updated_at < now() - make_interval(secs => :older_than_s)
                  AND (retry_at IS NULL OR retry_at <= now())
                ORDER BY priority DESC, created_at LIMIT :limit FOR UPDATE SKIP LOCKED
            )
            RETURNING id, kind, priority, attempt
            """
        ),
        {"kinds": list(kinds), "older_than_s": older_than_s, "limit": limit},
    ).all()
    return [Waiting(r.id, r.kind, r.priority, retried=r.attempt > 0) for r in rows]


def due_retries(session: Session, *, limit: int) -> list[Waiting]:
    """Jobs given back after a transient error whose backoff has passed: published now,
    whatever their queue holds (they wait no longer than their backoff)."""
    rows = session.execute(
        text(
            """
            UPDATE jobs SET retry_at = NULL, updated_at = now()
            WHERE id IN (
                SELECT id FROM jobs WHERE status = 'queued' AND retry_at IS NOT NULL AND retry_at <= now()
                ORDER BY retry_at LIMIT :limit FOR UPDATE SKIP LOCKED
            )
            RETURNING id, kind, priority
            """
        ),
        {"limit": limit},
    ).all()
    return [Waiting(r.id, r.kind, r.priority, retried=True) for r in rows]


@dataclass(frozen=True)
class TakenBack:
    requeued: list[Waiting]
    dead: list[uuid.UUID]  # failed with max_attempts_exceeded


def expired_leases(session: Session, *, limit: int) -> TakenBack:
    """Running jobs whose lease expired (their worker died or hung): back to ``queued``, or
    ``failed`` with ``max_attempts_exceeded`` once they used every attempt."""
    rows = session.execute(
        text(
            """
            UPDATE jobs SET
                history = jobs.history || jsonb_build_object(
                    'attempt', jobs.attempt, 'worker', jobs.worker, 'started_at', jobs.started_at,
                    'ended_at', now(), 'reason', CAST(:reason AS text)),
                status = CASE WHEN jobs.attempt >= jobs.max_attempts THEN 'failed' ELSE 'queued' END,
                error_code = CASE WHEN jobs.attempt >= jobs.max_attempts THEN 'max_attempts_exceeded' END,
                error_message = CASE WHEN jobs.attempt >= jobs.max_attempts THEN
                    'gave up after ' || jobs.attempt || ' attempts: every one ended without a result '
                    || '(the worker died or hung); see history' END,
                finished_at = CASE WHEN jobs.attempt >= jobs.max_attempts THEN now() END,
                lease_expires_at = NULL,
                updated_at = now()
            WHERE jobs.id IN (
                SELECT id FROM jobs WHERE status = 'running' AND lease_expires_at < now()
                ORDER BY lease_expires_at LIMIT :limit FOR UPDATE SKIP LOCKED
            )
            RETURNING jobs.id, jobs.kind, jobs.priority, jobs.status
            """
        ),
        {"limit": limit, "reason": "lease expired"},
    ).all()
    dead = [r.id for r in rows if r.status == "failed"]
    notify_finished(session, job_ids=dead)
    enqueue_webhooks(session, job_ids=dead)
    requeued = [Waiting(r.id, r.kind, r.priority, retried=True) for r in rows if r.status == "queued"]
    return TakenBack(requeued=requeued, dead=dead)


def extend_leases(session: Session, *, job_ids: Sequence[uuid.UUID], attempts: Sequence[int], lease_s: float) -> int:
    """A worker's heartbeat for jobs it still runs (fenced by attempt). Returns how many held."""
    result = session.execute(
        text(
            """
            UPDATE jobs SET lease_expires_at = now() + make_interval(secs => :lease_s)
            FROM unnest(CAST(:ids AS uuid[]), CAST(:attempts AS int[])) AS v(id, attempt)
            WHERE jobs.id = v.id AND jobs.attempt = v.attempt AND jobs.status = 'running'
            """
        ),
        {"ids": list(job_ids), "attempts": list(attempts), "lease_s": lease_s},
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
