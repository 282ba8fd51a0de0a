"""Store functions of jobs as data: accepted (inserted queued), read, listed, and their files.

Status changes live in ``jobs.lifecycle``; tenants and keys in ``jobs.keys``; bulk runs in
``jobs.batches``. Keyword-only beyond the session, free of HTTP and Celery. Every
tenant-facing query filters by tenant.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, text, tuple_
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session, sessionmaker

from jobs.artifacts import StoredArtifact
from jobs.db import writing
from jobs.ids import new_id
from jobs.status import JobStatus
from jobs.tables import Artifact, Batch, File, Job

# --- submission and reads ------------------------------------------------


@dataclass(frozen=True)
class NewJob:
    kind: str
    model: str
    profile: str
    input: dict[str, Any]
    priority: int
    metadata: dict[str, Any]
    max_attempts: int
    idempotency_key: str | None = None
    webhook_url: str | None = None
    id: uuid.UUID = field(default_factory=new_id)  # chosen early when input files are stored first


@dataclass(frozen=True)
class JobRow:
    """A job's row as plain values, with the attribute names of ``jobs.tables.Job``: what the
    API answers with, read without the ORM on the hot path (a group insert, a ``?wait`` wake-up)."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    kind: str
    model: str
    profile: str
    status: str
    priority: int
    input: dict[str, Any]
    output: dict[str, Any] | None
    error_code: str | None
    error_message: str | None
    attempt: int
    history: list[dict[str, Any]]
    metadata_: dict[str, Any]
    webhook_url: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, job: Job) -> JobRow:
        return cls(**{f.name: getattr(job, f.name) for f in fields(cls)})

    @classmethod
    def queued(cls, job: NewJob, *, tenant_id: uuid.UUID, created_at: datetime) -> JobRow:
        """The row ``job`` was inserted as: what it was given, and the table's defaults."""
        return cls(
            id=job.id, tenant_id=tenant_id, kind=job.kind, model=job.model, profile=job.profile,
            status=JobStatus.queued.value, priority=job.priority, input=job.input, output=None, error_code=None,
            error_message=None, attempt=0, history=[], metadata_=job.metadata, webhook_url=job.webhook_url,
            created_at=created_at, started_at=None, finished_at=None,
        )  # fmt: skip


# The group insert returns what the API does not know of its rows (their creation time), not
# their columns: the rest is what it sent (JobRow.queued). The waiter's read of finished rows
# (producer/waiter.py) is the one statement that lists JobRow's columns.
_INSERT_JOBS_SQL = text(
    """
    WITH v AS (
        SELECT * FROM jsonb_to_recordset(CAST(:rows AS jsonb))
            AS v(id uuid, tenant_id uuid, kind text, model text, profile text, priority int, input jsonb,
                 metadata jsonb, max_attempts int, idempotency_key text, webhook_url text, n int)
    ), places AS (  -- each tenant's next places in its kinds' queues (jobs/fairness.py)
        SELECT g.tenant_id, g.kind, g.priority,
            GREATEST(
                (SELECT max(j.fair_vt) FROM jobs j WHERE j.tenant_id = g.tenant_id AND j.kind = g.kind
                    AND j.priority = g.priority AND j.status = 'queued'),
                (SELECT min(j.fair_vt) FROM jobs j WHERE j.kind = g.kind AND j.priority = g.priority
                    AND j.status = 'queued' AND j.attempt = 0),
                0) AS base,
            1.0 / GREATEST(1, (SELECT t.share FROM tenants t WHERE t.id = g.tenant_id)) AS step
        FROM (SELECT DISTINCT tenant_id, kind, priority FROM v) g
    )
    INSERT INTO jobs (id, tenant_id, kind, model, profile, status, priority, input, metadata,
                      attempt, max_attempts, idempotency_key, webhook_url, fair_vt)
    SELECT v.id, v.tenant_id, v.kind, v.model, v.profile, 'queued', v.priority, v.input,
           v.metadata, 0, v.max_attempts, v.idempotency_key, v.webhook_url,
           p.base + p.step * row_number() OVER (PARTITION BY v.tenant_id, v.kind, v.priority ORDER BY v.n)
    FROM v JOIN places p ON p.tenant_id = v.tenant_id AND p.kind = v.kind AND p.priority = v.priority
    ON CONFLICT ON CONSTRAINT jobs_tenant_idempotency_key DO NOTHING
    RETURNING id, created_at
    """
)


def insert_jobs(session: Session, *, jobs: Sequence[tuple[uuid.UUID, NewJob]]) -> list[tuple[JobRow, bool]]:
    """Insert queued jobs, given as (tenant_id, job), in one statement. Returns (job, created)
    in the given order; a job whose Idempotency-Key its tenant used before (or earlier in
    ``jobs``) comes back as that earlier job with created=False. Plain rows, no ORM objects:
    building them cost half of a group's CPU in the API (measured with cProfile)."""
    if not jobs:
        return []
    rows = [
        {
            "id": str(j.id),
            "tenant_id": str(t),
            "kind": j.kind,
            "model": j.model,
            "profile": j.profile,
            "priority": j.priority,
            "input": j.input,
            "metadata": j.metadata,
            "max_attempts": j.max_attempts,
            "idempotency_key": j.idempotency_key,
            "webhook_url": j.webhook_url,
            "n": n,
        }
        for n, (t, j) in enumerate(jobs)
    ]
    created = {r.id: r.created_at for r in session.execute(_INSERT_JOBS_SQL, {"rows": json.dumps(rows)})}
    replayed = [(t, j.idempotency_key) for t, j in jobs if j.id not in created and j.idempotency_key is not None]
    earlier: dict[tuple[uuid.UUID, str | None], JobRow] = {}
    if replayed:  # a retried submission: rare, and read through the ORM
        found = session.execute(select(Job).where(tuple_(Job.tenant_id, Job.idempotency_key).in_(replayed)))
        earlier = {(job.tenant_id, job.idempotency_key): JobRow.of(job) for job in found.scalars()}
    out = []
    for tenant_id, job in jobs:
        if job.id in created:
            out.append((JobRow.queued(job, tenant_id=tenant_id, created_at=created[job.id]), True))
        else:  # only a job with a key can be missing: ON CONFLICT on (tenant, key) is the one skip
            out.append((earlier[(tenant_id, job.idempotency_key)], False))
    return out


def accept_jobs(
    sessions: sessionmaker[Session],
    *,
    jobs: Sequence[tuple[uuid.UUID, NewJob]],
    files: Sequence[Sequence[StoredArtifact]] = (),
) -> list[tuple[JobRow, bool]]:
    """:func:`insert_jobs` in a write of its own, with ``files[i]``, the input files already
    stored for ``jobs[i]``, recorded for each job it created: one statement (committed on its
    own) when no job brings files, else one transaction."""
    brought = list(files) or [()] * len(jobs)
    with writing(sessions, one_statement=not any(brought)) as session:
        rows = insert_jobs(session, jobs=jobs)
        made = [(row.id, f) for (row, created), fs in zip(rows, brought, strict=True) if created for f in fs]
        add_artifacts(session, rows=made)
    return rows


def insert_job(session: Session, *, tenant_id: uuid.UUID, job: NewJob) -> tuple[JobRow, bool]:
    """Insert one queued job; see insert_jobs."""
    return insert_jobs(session, jobs=[(tenant_id, job)])[0]


def active_jobs(session: Session, *, tenant_id: uuid.UUID, kind: str) -> int:
    """The tenant's queued and running single jobs of ``kind`` (bulk-run items not counted)."""
    return int(
        session.execute(
            select(func.count())
            .select_from(Job)
            .where(
                Job.tenant_id == tenant_id,
                Job.kind == kind,
                Job.status.in_([JobStatus.queued.value, JobStatus.running.value]),
                Job.batch_id.is_(None),
            )
        ).scalar_one()
    )


def get_job(session: Session, *, tenant_id: uuid.UUID, job_id: uuid.UUID) -> Job | None:
    return session.execute(select(Job).where(Job.id == job_id, Job.tenant_id == tenant_id)).scalar_one_or_none()


def encode_cursor(row: Job | Batch) -> str:
    """An opaque page cursor: the (created_at, id) of the last row shown."""
    raw = json.dumps([row.created_at.isoformat(), str(row.id)])
    return base64.urlsafe_b64encode(raw.encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """Raises ValueError on a cursor this API did not make."""
    try:
        created, job_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        return datetime.fromisoformat(created), uuid.UUID(job_id)
    except Exception as exc:  # any garbage is the caller's mistake
        raise ValueError("cursor is not one this API returned") from exc


Listed = type[Job] | type[Batch] | type[File]  # tables listed newest first, a page at a time
WHAT = {"jobs": "job", "batches": "bulk run", "files": "file"}  # a listed row, as errors name it


def past(table: Listed, created_at: datetime, row_id: uuid.UUID, *, newest_first: bool = True) -> Any:
    """The rows after (created_at, id) in a listing's order (older ones, newest first): one row
    comparison, which walks the table's (tenant_id, created_at, id) index from there."""
    key, seen = tuple_(table.created_at, table.id), tuple_(created_at, row_id)
    return key < seen if newest_first else key > seen


def position(session: Session, table: Listed, *, tenant_id: uuid.UUID, row_id: uuid.UUID) -> datetime:
    """Where a tenant's row ``row_id`` stands in its listing (OpenAI's ``after``); ValueError
    when it is not one of the tenant's."""
    found = session.execute(
        select(table.created_at).where(table.id == row_id, table.tenant_id == tenant_id)
    ).scalar_one_or_none()
    if found is None:
        raise ValueError(f"after={row_id} is not a {WHAT[table.__tablename__]} of this tenant")
    return found


def list_jobs(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    status: JobStatus | None = None,
    kind: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[Job], str | None]:
    """Newest first. Returns the page and the cursor of the next page (None at the end)."""
    stmt = select(Job).where(Job.tenant_id == tenant_id)
    if status is not None:
        stmt = stmt.where(Job.status == status.value)
    if kind is not None:
        stmt = stmt.where(Job.kind == kind)
    if cursor is not None:
        created, last_id = decode_cursor(cursor)
        stmt = stmt.where(past(Job, created, last_id))
    rows = list(session.execute(stmt.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)).scalars())
    next_cursor = encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return rows[:limit], next_cursor


# --- artifacts -------------------------------------------------------------


def add_artifacts(session: Session, *, rows: Sequence[tuple[uuid.UUID, StoredArtifact]]) -> None:
    """Record stored artifacts of jobs; a retried attempt overwrites its earlier row."""
    if not rows:
        return
    stmt = pg_insert(Artifact).values(
        [
            {
                "id": uuid.uuid4(),
                "job_id": job_id,
                "name": a.name,
                "content_type": a.content_type,
                "size_bytes": a.size_bytes,
                "sha256": a.sha256,
                "uri": a.uri,
            }
            for job_id, a in rows
        ]
    )
    session.execute(
        stmt.on_conflict_do_update(
            constraint="artifacts_job_name",
            set_={c: stmt.excluded[c] for c in ("content_type", "size_bytes", "sha256", "uri")},
        )
    )


def artifact_uris(session: Session, *, job_ids: Sequence[uuid.UUID]) -> dict[tuple[uuid.UUID, str], str]:
    """Where the artifacts of these jobs are stored, in one query (the worker side)."""
    rows = session.execute(
        select(Artifact.job_id, Artifact.name, Artifact.uri).where(Artifact.job_id.in_(list(job_ids)))
    ).all()
    return {(r.job_id, r.name): r.uri for r in rows}


def get_artifact(session: Session, *, tenant_id: uuid.UUID, job_id: uuid.UUID, name: str) -> Artifact | None:
    return session.execute(
        select(Artifact)
        .join(Job, Job.id == Artifact.job_id)
        .where(Artifact.job_id == job_id, Artifact.name == name, Job.tenant_id == tenant_id)
    ).scalar_one_or_none()


def list_artifacts(session: Session, *, tenant_id: uuid.UUID, job_id: uuid.UUID) -> list[Artifact]:
    return list(
        session.execute(
            select(Artifact)
            .join(Job, Job.id == Artifact.job_id)
            .where(Artifact.job_id == job_id, Job.tenant_id == tenant_id)
            .order_by(Artifact.name)
        ).scalars()
    )
