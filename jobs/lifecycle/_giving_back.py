"""running → queued again after a transient error or an expired lease, or to the dead letter."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.orm import Session

from jobs.lifecycle._ending import ended
from jobs.pgvalues import int_array, uuid_array
from jobs.status import JobStatus

RETRY_BASE_S = 2.0  # a job given back after a transient error waits this long before its second attempt,
RETRY_MAX_S = 300.0  # doubling per attempt up to this, times a random 0.5-1.5 (jitter)
LEASE_EXPIRED = "lease expired"


# status COLLATE "C": the jobs are found by primary key, not by the running jobs' index (_finishing.py)
_GIVE_BACK_SQL = text(
    """
    UPDATE jobs SET
        history = jobs.history || jsonb_build_object('attempt', jobs.attempt, 'worker', jobs.worker,
            'started_at', jobs.started_at, 'ended_at', now(), 'reason', CAST(:reason AS text)),
        status = CASE WHEN jobs.cancel_requested_at IS NOT NULL THEN 'cancelled'
                      WHEN jobs.attempt >= jobs.max_attempts THEN 'failed' ELSE 'queued' END,
        error_code = CASE WHEN jobs.cancel_requested_at IS NULL AND jobs.attempt >= jobs.max_attempts
            THEN 'max_attempts_exceeded' END,
        error_message = CASE WHEN jobs.cancel_requested_at IS NOT NULL THEN NULL
            WHEN jobs.attempt >= jobs.max_attempts
            THEN 'gave up after ' || jobs.attempt || ' attempts: ' || CAST(:gave_up AS text)
            ELSE CAST(:reason AS text) END,
        finished_at = CASE WHEN jobs.cancel_requested_at IS NOT NULL OR jobs.attempt >= jobs.max_attempts
            THEN now() END,
        retry_at = CASE WHEN jobs.cancel_requested_at IS NULL AND jobs.attempt < jobs.max_attempts
            AND :retry_base_s > 0 THEN now() + make_interval(
            secs => least(:retry_max_s, :retry_base_s * 2 ^ (jobs.attempt - 1)) * (0.5 + random())) END,
        lease_expires_at = NULL,
        updated_at = now()
    FROM unnest(CAST(:ids AS uuid[]), CAST(:attempts AS int[])) AS v(id, attempt)
    WHERE jobs.id = v.id AND jobs.attempt = v.attempt AND jobs.status COLLATE "C" = 'running'
    RETURNING jobs.id, jobs.kind, jobs.priority, jobs.status
    """
)


@dataclass(frozen=True)
class Waiting:
    """A queued job to publish (again)."""

    id: uuid.UUID
    kind: str
    priority: int
    retried: bool = False  # it lost an attempt before: run it alone


@dataclass(frozen=True)
class GivenBack:
    requeued: list[Waiting]
    dead: list[uuid.UUID]  # failed with max_attempts_exceeded
    cancelled: list[uuid.UUID] = field(default_factory=list)  # a user asked to cancel them while they ran


def give_back(
    session: Session,
    *,
    job_ids: Sequence[uuid.UUID],
    attempts: Sequence[int],
    reason: str,
    gave_up: str | None = None,
    retry_base_s: float = RETRY_BASE_S,
    retry_max_s: float = RETRY_MAX_S,
) -> GivenBack:
    """Give claimed jobs back to the queue (a transient error), due again after an exponential
    backoff with jitter (the reconciler publishes them then; ``retry_base_s`` 0: at once).
    Jobs that used all their attempts fail with ``max_attempts_exceeded``, saying ``gave_up``
    (default: ``reason``). A job whose cancel was asked while it ran ends ``cancelled``
    instead: a dead worker must not undo a cancel. Each lost attempt is added to its history."""
    rows = session.execute(
        _GIVE_BACK_SQL,
        {
            "ids": uuid_array(job_ids),
            "attempts": int_array(attempts),
            "reason": reason,
            "gave_up": gave_up or reason,
            "retry_base_s": retry_base_s,
            "retry_max_s": retry_max_s,
        },
    ).all()
    dead = [r.id for r in rows if r.status == JobStatus.failed.value]
    cancelled = [r.id for r in rows if r.status == JobStatus.cancelled.value]
    ended(session, job_ids=dead + cancelled)
    requeued = [Waiting(r.id, r.kind, r.priority, retried=True) for r in rows if r.status == JobStatus.queued.value]
    return GivenBack(requeued=requeued, dead=dead, cancelled=cancelled)


def expired_leases(session: Session, *, limit: int) -> GivenBack:
    """Running jobs whose lease expired (their worker died or hung), given back at once: to
    ``queued`` for the caller to publish, or to the dead letter once every attempt is used."""
    expired = session.execute(
        text(
            """
            SELECT id, attempt FROM jobs WHERE status = 'running' AND lease_expires_at < now()
            ORDER BY lease_expires_at LIMIT :limit FOR UPDATE SKIP LOCKED
            """
        ),
        {"limit": limit},
    ).all()
    if not expired:
        return GivenBack(requeued=[], dead=[])
    return give_back(
        session,
        job_ids=[r.id for r in expired],
        attempts=[r.attempt for r in expired],
        reason=LEASE_EXPIRED,
        gave_up="every one ended without a result (the worker died or hung); see history",
        retry_base_s=0,
    )
