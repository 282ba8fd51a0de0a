"""Store reads for operators (the admin scope): across tenants, for the ops page and /metrics."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from jobs.status import JobStatus
from jobs.tables import Artifact, Batch, Job, Tenant

UNFINISHED = (JobStatus.queued.value, JobStatus.running.value)


def unfinished_counts(session: Session) -> dict[tuple[str, str], int]:
    """Queued and running jobs per (kind, status), read through the partial indexes."""
    rows = session.execute(
        select(Job.kind, Job.status, func.count()).where(Job.status.in_(UNFINISHED)).group_by(Job.kind, Job.status)
    ).all()
    return {(kind, status): int(n) for kind, status, n in rows}


_TENANT_WORK_SQL = text(
    """
    SELECT t.name AS tenant, w.kind, sum(w.queued)::int AS queued, sum(w.running)::int AS running,
           sum(w.done)::int AS done_last_minute
    FROM (
        SELECT tenant_id, kind, count(*) FILTER (WHERE status = 'queued') AS queued,
               count(*) FILTER (WHERE status = 'running') AS running, 0 AS done
        FROM jobs WHERE status IN ('queued', 'running') GROUP BY tenant_id, kind
        UNION ALL
        SELECT tenant_id, kind, 0, 0, count(*) FROM jobs
        WHERE finished_at > now() - interval '60 seconds' AND status IN ('succeeded', 'failed', 'cancelled')
        GROUP BY tenant_id, kind
    ) w JOIN tenants t ON t.id = w.tenant_id
    GROUP BY t.name, w.kind ORDER BY w.kind, t.name
    """
)


def tenant_work(session: Session) -> list[dict[str, Any]]:
    """Per tenant and kind: queued, running, finished in the last minute, and its share of the
    kind's last minute of work (what fair claiming gave it, jobs/fairness.py)."""
    rows = [dict(r._mapping) for r in session.execute(_TENANT_WORK_SQL)]
    totals: dict[str, int] = {}
    for row in rows:
        totals[row["kind"]] = totals.get(row["kind"], 0) + row["done_last_minute"]
    for row in rows:
        total = totals[row["kind"]]
        row["share_last_minute"] = round(row["done_last_minute"] / total, 3) if total else 0.0
    return rows


def recent_failures(session: Session, *, limit: int = 20) -> list[dict[str, Any]]:
    rows = session.execute(
        select(Job.id, Job.kind, Tenant.name, Job.error_code, Job.error_message, Job.attempt, Job.finished_at)
        .join(Tenant, Tenant.id == Job.tenant_id)
        .where(Job.status == JobStatus.failed.value)
        .order_by(Job.finished_at.desc())
        .limit(limit)
    ).all()
    return [
        {"id": str(r.id), "kind": r.kind, "tenant": r.name, "error_code": r.error_code,
         "error_message": r.error_message, "attempt": r.attempt,
         "finished_at": r.finished_at.isoformat() if r.finished_at else None}
        for r in rows
    ]  # fmt: skip


def recent_jobs(session: Session, *, limit: int = 20) -> list[dict[str, Any]]:
    """The newest single jobs (bulk-run items left out), for the job view's list."""
    rows = session.execute(
        select(Job.id, Job.kind, Tenant.name, Job.status, Job.created_at)
        .join(Tenant, Tenant.id == Job.tenant_id)
        .where(Job.batch_id.is_(None))
        .order_by(Job.created_at.desc())
        .limit(limit)
    ).all()
    return [
        {"id": str(r.id), "kind": r.kind, "tenant": r.name, "status": r.status, "created_at": r.created_at.isoformat()}
        for r in rows
    ]


def recent_batches(session: Session, *, limit: int = 20) -> list[Batch]:
    """The newest batches of every tenant, running or finished, newest first."""
    return list(session.execute(select(Batch).order_by(Batch.created_at.desc()).limit(limit)).scalars())


def tenant_names(session: Session, *, tenant_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, str]:
    rows = session.execute(select(Tenant.id, Tenant.name).where(Tenant.id.in_(list(tenant_ids)))).all()
    return {r.id: r.name for r in rows}


def any_job(session: Session, *, job_id: uuid.UUID) -> Job | None:
    return session.execute(select(Job).where(Job.id == job_id)).scalar_one_or_none()


def any_artifact(session: Session, *, job_id: uuid.UUID, name: str) -> Artifact | None:
    return session.execute(
        select(Artifact).where(Artifact.job_id == job_id, Artifact.name == name)
    ).scalar_one_or_none()


def artifact_names(session: Session, *, job_id: uuid.UUID) -> list[tuple[str, str]]:
    rows = session.execute(
        select(Artifact.name, Artifact.content_type).where(Artifact.job_id == job_id).order_by(Artifact.name)
    ).all()
    return [(r.name, r.content_type) for r in rows]
