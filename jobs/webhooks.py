"""Store functions of the webhook outbox: rows written for finished jobs and bulk runs (in
the transaction that finishes them), due deliveries claimed, each attempt recorded."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.orm import Session

from jobs.pgvalues import uuid_array

CLAIM_LEASE_S = 60  # a claimed delivery is not picked up again for this long (the dispatcher may die mid-send)


_JOB_WEBHOOKS_SQL = text(
    """
    INSERT INTO webhook_deliveries (id, tenant_id, job_id, url, status, attempts)
    SELECT gen_random_uuid(), tenant_id, id, webhook_url, 'pending', 0
    FROM jobs WHERE id = ANY(CAST(:ids AS uuid[])) AND webhook_url IS NOT NULL
    ON CONFLICT DO NOTHING
    """
)
_BATCH_LOCK_SQL = text(
    """
    SELECT id FROM batches
    WHERE id IN (SELECT DISTINCT batch_id FROM jobs WHERE id = ANY(CAST(:ids AS uuid[])))
      AND webhook_url IS NOT NULL
    ORDER BY id FOR UPDATE
    """
)
_BATCH_WEBHOOKS_SQL = text(
    """
    INSERT INTO webhook_deliveries (id, tenant_id, batch_id, url, status, attempts)
    SELECT gen_random_uuid(), b.tenant_id, b.id, b.webhook_url, 'pending', 0
    FROM batches b
    WHERE b.id = ANY(CAST(:batch_ids AS uuid[]))
      AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.batch_id = b.id AND j.status IN ('queued', 'running'))
    ON CONFLICT DO NOTHING
    """
)


def write_outbox(session: Session, *, job_ids: Sequence[uuid.UUID], hooks: bool = True, batches: bool = True) -> None:
    """Outbox rows for finished jobs that asked for a webhook, and for their bulk runs once the
    last item is done. The run's row is locked first, so two workers finishing a run's last
    items at once cannot both miss (or both send) its webhook."""
    if not job_ids:
        return
    ids = list(job_ids)
    if hooks:  # ``hooks``/``batches`` False: the caller knows none asked / none is in a bulk run
        session.execute(_JOB_WEBHOOKS_SQL, {"ids": uuid_array(ids)})
    batch_ids = session.execute(_BATCH_LOCK_SQL, {"ids": uuid_array(ids)}).scalars().all() if batches else []
    if batch_ids:
        session.execute(_BATCH_WEBHOOKS_SQL, {"batch_ids": list(batch_ids)})


@dataclass(frozen=True)
class Due:
    id: uuid.UUID
    tenant_id: uuid.UUID
    job_id: uuid.UUID | None
    batch_id: uuid.UUID | None
    url: str
    attempt: int  # this attempt's number, from 1


def claim_due(session: Session, *, limit: int, skip_tenants: Sequence[uuid.UUID] = ()) -> list[Due]:
    """Take up to ``limit`` due deliveries, none of ``skip_tenants``; SKIP LOCKED lets several
    API processes share the work."""
    rows = session.execute(
        text(
            """
            UPDATE webhook_deliveries d
            SET attempts = d.attempts + 1, next_attempt_at = now() + make_interval(secs => :lease_s)
            WHERE d.id IN (
                SELECT id FROM webhook_deliveries
                WHERE status = 'pending' AND next_attempt_at <= now()
                  AND tenant_id <> ALL(CAST(:skip AS uuid[]))
                ORDER BY next_attempt_at LIMIT :limit FOR UPDATE SKIP LOCKED
            )
            RETURNING d.id, d.tenant_id, d.job_id, d.batch_id, d.url, d.attempts
            """
        ),
        {"limit": limit, "lease_s": CLAIM_LEASE_S, "skip": list(skip_tenants)},
    ).all()
    return [Due(r.id, r.tenant_id, r.job_id, r.batch_id, r.url, r.attempts) for r in rows]


def record(
    session: Session,
    *,
    delivery_id: uuid.UUID,
    delivered: bool,
    status_code: int | None,
    error: str | None,
    retry_in_s: float | None,
) -> None:
    """One attempt's result: delivered, retried after ``retry_in_s``, or failed for good (None)."""
    status = "delivered" if delivered else ("pending" if retry_in_s is not None else "failed")
    session.execute(
        text(
            """
            UPDATE webhook_deliveries SET
                status = CAST(:status AS varchar), last_status_code = :code, last_error = :error,
                delivered_at = CASE WHEN CAST(:status AS varchar) = 'delivered' THEN now() END,
                next_attempt_at = now() + make_interval(secs => :retry_s)
            WHERE id = :id
            """
        ),
        {"status": status, "code": status_code, "error": error, "retry_s": retry_in_s or 0, "id": delivery_id},
    )


def deliveries_of(session: Session, *, job_ids: Sequence[uuid.UUID]) -> list[tuple[str, int, int | None]]:
    """(status, attempts, last status code) of the deliveries of these jobs: for tests and ops."""
    rows = session.execute(
        text("SELECT status, attempts, last_status_code FROM webhook_deliveries WHERE job_id = ANY(:ids)"),
        {"ids": list(job_ids)},
    ).all()
    return [(r.status, r.attempts, r.last_status_code) for r in rows]
