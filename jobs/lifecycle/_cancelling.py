"""queued → cancelled at once; a running job is asked to stop (it ends cancelled)."""

from __future__ import annotations

import uuid

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from jobs import batches, store
from jobs.errors import Conflict
from jobs.lifecycle._ending import ended
from jobs.status import JobStatus
from jobs.tables import Batch, Job


def cancel_job(session: Session, *, tenant_id: uuid.UUID, job_id: uuid.UUID) -> Job | None:
    """Cancel a queued job at once; ask a running one to stop (it ends ``cancelled``).
    A finished job is returned unchanged."""
    queued = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.tenant_id == tenant_id, Job.status == JobStatus.queued.value)
        .values(status=JobStatus.cancelled.value, finished_at=func.now(), updated_at=func.now())
        .returning(Job.id)
    ).first()
    if queued is not None:
        ended(session, job_ids=[job_id])
    else:
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.tenant_id == tenant_id, Job.status == JobStatus.running.value)
            .values(cancel_requested_at=func.now(), updated_at=func.now())
        )
    session.expire_all()
    return store.get_job(session, tenant_id=tenant_id, job_id=job_id)


def cancel_batch(session: Session, *, tenant_id: uuid.UUID, batch_id: uuid.UUID) -> Batch | None:
    """Queued items are cancelled now; running ones end ``cancelled``; finished ones stay.
    A run whose every item had finished before any cancel is a Conflict: it stays as it ended."""
    batch = session.execute(
        select(Batch).where(Batch.id == batch_id, Batch.tenant_id == tenant_id).with_for_update()
    ).scalar_one_or_none()
    if batch is None:
        return None
    if batch.cancel_requested_at is None:
        tally = batches.counts(session, batch_ids=[batch.id])[batch.id]
        if not tally.unfinished:
            final = batches.status_of(batch, tally)
            raise Conflict(f"bulk run {batch_id} already finished ({final}); nothing to cancel")
        batch.cancel_requested_at = session.execute(select(func.now())).scalar_one()
    cancelled = (
        session.execute(
            update(Job)
            .where(Job.batch_id == batch_id, Job.status == JobStatus.queued.value)
            .values(status=JobStatus.cancelled.value, finished_at=func.now(), updated_at=func.now())
            .returning(Job.id)
        )
        .scalars()
        .all()
    )
    session.execute(
        update(Job)
        .where(Job.batch_id == batch_id, Job.status == JobStatus.running.value)
        .values(cancel_requested_at=func.now())
    )
    ended(session, job_ids=list(cancelled))
    return batch
