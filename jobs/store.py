"""Store functions: everything mlq reads or writes in PostgreSQL.

Keyword-only beyond the session, free of HTTP and Celery. Every tenant-facing
query filters by tenant. Worker-facing writes are fenced: a claim only takes
``queued`` rows, and a final write only lands for the attempt that claimed
the row, so a redelivered message can never store a second result.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import and_, func, insert, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from jobs.artifacts import StoredArtifact
from jobs.db import NOTIFY_CHANNEL
from jobs.ids import new_id
from jobs.status import JobStatus
from jobs.tables import ApiKey, Artifact, Batch, Job, Tenant

SCOPES = ("submit", "read", "admin")
KEY_PREFIX = "mlq"
NOTIFY_IDS_PER_MESSAGE = 200  # 200 uuids stay well under PostgreSQL's 8000-byte payload limit


# --- tenants and keys ----------------------------------------------------


@dataclass(frozen=True)
class Principal:
    tenant_id: uuid.UUID
    tenant_name: str
    key_id: uuid.UUID
    scopes: frozenset[str]
    jobs_per_minute: int | None = None  # the tenant's own limits; None: the deployment's default
    max_active_jobs_per_kind: int | None = None


def ensure_tenant(session: Session, *, name: str) -> uuid.UUID:
    stmt = (
        pg_insert(Tenant)
        .values(id=uuid.uuid4(), name=name, webhook_secret=secrets.token_hex(32))
        .on_conflict_do_nothing(index_elements=[Tenant.name])
    )
    session.execute(stmt)
    return session.execute(select(Tenant.id).where(Tenant.name == name)).scalar_one()


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def webhook_secret(session: Session, *, tenant: str) -> str | None:
    return session.execute(select(Tenant.webhook_secret).where(Tenant.name == tenant)).scalar_one_or_none()


def create_api_key(session: Session, *, tenant: str, scopes: Sequence[str] = SCOPES) -> tuple[str, uuid.UUID]:
    """Create a key for ``tenant`` (created if new). Returns the key, shown only now, and its id.

    Keys carry 256 random bits, so a SHA-256 of the key is safe to store and
    compare; the prefix is public and only finds the row.
    """
    unknown = set(scopes) - set(SCOPES)
    if unknown:
        raise ValueError(f"unknown scopes {sorted(unknown)}; known: {', '.join(SCOPES)}")
    tenant_id = ensure_tenant(session, name=tenant)
    prefix = secrets.token_hex(6)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    key = f"{KEY_PREFIX}_{prefix}_{secret}"
    key_id = uuid.uuid4()
    session.execute(
        insert(ApiKey).values(
            id=key_id, tenant_id=tenant_id, prefix=prefix, key_hash=hash_key(key), scopes=list(scopes)
        )
    )
    return key, key_id


def authenticate(session: Session, *, key: str) -> Principal | None:
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX:
        return None
    row = session.execute(
        select(
            ApiKey.id,
            ApiKey.key_hash,
            ApiKey.scopes,
            ApiKey.revoked_at,
            Tenant.id,
            Tenant.name,
            Tenant.jobs_per_minute,
            Tenant.max_active_jobs_per_kind,
        )
        .join(Tenant, Tenant.id == ApiKey.tenant_id)
        .where(ApiKey.prefix == parts[1])
    ).first()
    if row is None or row.revoked_at is not None:
        return None
    if not hmac.compare_digest(row.key_hash, hash_key(key)):
        return None
    return Principal(
        tenant_id=row[4], tenant_name=row.name, key_id=row.id, scopes=frozenset(row.scopes),
        jobs_per_minute=row.jobs_per_minute, max_active_jobs_per_kind=row.max_active_jobs_per_kind,
    )  # fmt: skip


def set_tenant_limits(
    session: Session, *, tenant: str, jobs_per_minute: int | None, max_active_jobs_per_kind: int | None
) -> bool:
    """Set a tenant's own submission limits (None: back to the deployment's default; 0: none)."""
    result = session.execute(
        update(Tenant)
        .where(Tenant.name == tenant)
        .values(jobs_per_minute=jobs_per_minute, max_active_jobs_per_kind=max_active_jobs_per_kind)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def revoke_api_key(session: Session, *, prefix: str) -> bool:
    result = session.execute(
        update(ApiKey).where(ApiKey.prefix == prefix, ApiKey.revoked_at.is_(None)).values(revoked_at=func.now())
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


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


# The statements that build JobRow values list its columns in its order (written out: SQL
# text is never assembled from pieces, tests/security/test_static.py).
_INSERT_JOBS_SQL = text(
    """
    INSERT INTO jobs (id, tenant_id, kind, model, profile, status, priority, input, metadata,
                      attempt, max_attempts, idempotency_key, webhook_url)
    SELECT v.id, v.tenant_id, v.kind, v.model, v.profile, 'queued', v.priority, v.input,
           v.metadata, 0, v.max_attempts, v.idempotency_key, v.webhook_url
    FROM jsonb_to_recordset(CAST(:rows AS jsonb))
         AS v(id uuid, tenant_id uuid, kind text, model text, profile text, priority int, input jsonb,
              metadata jsonb, max_attempts int, idempotency_key text, webhook_url text)
    ON CONFLICT ON CONSTRAINT jobs_tenant_idempotency_key DO NOTHING
    RETURNING id, tenant_id, kind, model, profile, status, priority, input, output, error_code, error_message,
           attempt, history, metadata AS metadata_, webhook_url, created_at, started_at, finished_at
    """
)
_EARLIER_JOBS_SQL = text(
    """
    SELECT idempotency_key,
           id, tenant_id, kind, model, profile, status, priority, input, output, error_code, error_message,
           attempt, history, metadata AS metadata_, webhook_url, created_at, started_at, finished_at
    FROM jobs
    WHERE (tenant_id, idempotency_key) IN (SELECT * FROM unnest(CAST(:tenants AS uuid[]), CAST(:keys AS text[])))
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
        }
        for t, j in jobs
    ]
    created = {
        row.id: row for row in (JobRow(*r) for r in session.execute(_INSERT_JOBS_SQL, {"rows": json.dumps(rows)}))
    }
    replayed = [(t, j.idempotency_key) for t, j in jobs if j.id not in created and j.idempotency_key is not None]
    earlier: dict[tuple[uuid.UUID, str | None], JobRow] = {}
    if replayed:
        keys = {"tenants": [t for t, _ in replayed], "keys": [k for _, k in replayed]}
        found = session.execute(_EARLIER_JOBS_SQL, keys)
        keyed = [(r[0], JobRow(*r[1:])) for r in found]  # (the Idempotency-Key, the earlier job)
        earlier = {(row.tenant_id, key): row for key, row in keyed}
    out = []
    for tenant_id, job in jobs:
        if job.id in created:
            out.append((created[job.id], True))
        else:  # only a job with a key can be missing: ON CONFLICT on (tenant, key) is the one skip
            out.append((earlier[(tenant_id, job.idempotency_key)], False))
    return out


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
        stmt = stmt.where(or_(Job.created_at < created, and_(Job.created_at == created, Job.id < last_id)))
    rows = list(session.execute(stmt.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)).scalars())
    next_cursor = encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return rows[:limit], next_cursor


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
        notify_finished(session, job_ids=[job_id])
        enqueue_webhooks(session, job_ids=[job_id])
    else:
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.tenant_id == tenant_id, Job.status == JobStatus.running.value)
            .values(cancel_requested_at=func.now(), updated_at=func.now())
        )
    session.expire_all()
    return get_job(session, tenant_id=tenant_id, job_id=job_id)


# --- the worker side -----------------------------------------------------


def cancel_requested(session: Session, *, job_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    """Which of these running jobs a user has asked to cancel (polled while a job generates)."""
    rows = session.execute(
        select(Job.id).where(Job.id.in_(list(job_ids)), Job.cancel_requested_at.is_not(None))
    ).scalars()
    return set(rows)


@dataclass(frozen=True)
class Claimed:
    id: uuid.UUID
    attempt: int
    input: dict[str, Any]
    tenant_id: uuid.UUID
    tenant: str = ""  # the tenant's name, for metrics and logs
    waited_s: float = 0.0  # created → claimed, on PostgreSQL's clock
    follow_up: bool = True  # its finish writes more than its row (a webhook, a bulk run's bookkeeping)


# The claim's cost must not grow with the queue. Two things keep it at O(batch) whatever
# PostgreSQL's statistics say (a fresh table has none; a table analyzed while its queue was
# short says almost nothing is queued):
# - ``own`` compares ``status COLLATE "C"``, which the partial index of queued jobs does not
#   match, so the message's ids are looked up by primary key. With ``status = 'queued'`` the
#   planner scanned that whole index (every queued job) for the few ids, at each claim.
# - The UPDATE finds the rows the CTEs locked by their ctid (a TID scan). With ``id IN (…)``
#   it semi-joined every queued job against the batch: 17 ms per claim at 3,200 queued, and
#   with ``id = ANY(…)`` it chose a sequential scan of a table without statistics.
#   A row locked here cannot change before the UPDATE. One that another transaction changed
#   after this statement's snapshot but before the lock, still queued (the reconciler
#   touching a stale job as it publishes it again), may be locked in a version the UPDATE
#   cannot see: it stays queued for that transaction's own message. Nothing is claimed twice.
_CLAIM_SQL = text(
    """
    WITH own AS (
        SELECT ctid, attempt FROM jobs
        WHERE id = ANY(CAST(:ids AS uuid[])) AND status COLLATE "C" = 'queued' AND kind = :kind
        FOR UPDATE SKIP LOCKED
    ), extra AS (
        SELECT ctid FROM jobs
        WHERE kind = :kind AND status = 'queued' AND attempt = 0 AND :fill_to > 0
          AND NOT (id = ANY(CAST(:ids AS uuid[])))
          AND NOT EXISTS (SELECT 1 FROM own WHERE own.attempt > 0)
        ORDER BY priority DESC, created_at
        LIMIT GREATEST(0, :fill_to - (SELECT count(*) FROM own)) FOR UPDATE SKIP LOCKED
    )
    UPDATE jobs SET
        status = 'running', attempt = jobs.attempt + 1, worker = :worker,
        started_at = now(), updated_at = now(), lease_expires_at = now() + make_interval(secs => :lease_s)
    WHERE jobs.ctid = ANY(ARRAY(SELECT ctid FROM own UNION ALL SELECT ctid FROM extra))
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
    """Take the still-queued jobs among ``job_ids`` and more queued jobs of the kind (most
    urgent first) until the claim holds ``fill_to`` jobs, in one statement.

    Filling is how single-job messages become batches: PostgreSQL already holds every
    accepted job, so a worker takes what is waiting instead of waiting for messages.
    The messages of filled jobs later find nothing queued and fill a batch of their own (only
    the message's jobs still queued count towards ``fill_to``). Only fresh jobs
    fill, and a retried job never gets company: if it is what killed its last worker, it
    must not take innocent jobs' attempts down with it again.
    """
    rows = session.execute(
        _CLAIM_SQL,
        {"ids": uuid_array(job_ids), "kind": kind, "worker": worker, "lease_s": lease_s, "fill_to": max(0, fill_to)},
    ).all()
    return [
        Claimed(
            id=r.id,
            attempt=r.attempt,
            input=r.input,
            tenant_id=r.tenant_id,
            tenant=r.tenant,
            waited_s=r.waited_s,
            follow_up=r.follow_up,
        )
        for r in rows
    ]


@dataclass(frozen=True)
class Outcome:
    """The end of one attempt: an output, or an error code and message."""

    job_id: uuid.UUID
    attempt: int
    output: BaseModel | dict[str, Any] | None = None  # a kind's output schema (the runner) or plain JSON
    error_code: str | None = None
    error_message: str | None = None


_FINISH_SQL = text(
    """
    WITH done AS (
        UPDATE jobs SET
            status = CASE
                WHEN jobs.cancel_requested_at IS NOT NULL THEN 'cancelled'
                WHEN v.error_code IS NULL THEN 'succeeded'
                ELSE 'failed' END,
            output = CASE WHEN jobs.cancel_requested_at IS NULL THEN v.output END,
            error_code = v.error_code,
            error_message = v.error_message,
            finished_at = now(),
            updated_at = now(),
            lease_expires_at = NULL
        FROM jsonb_to_recordset(CAST(:rows AS jsonb))
             AS v(id uuid, attempt int, output jsonb, error_code text, error_message text)
        WHERE jobs.id = v.id AND jobs.attempt = v.attempt AND jobs.status = 'running'
        RETURNING jobs.id, jobs.webhook_url IS NOT NULL AS hook, jobs.batch_id IS NOT NULL AS in_batch
    ), told AS (  -- the wake-up for long polls, in the same round trip (sent on commit)
        SELECT pg_notify(:channel, string_agg(id::text, ',')) FROM done WHERE CAST(:notify_here AS boolean)
    )
    SELECT done.id, done.hook, done.in_batch, (SELECT count(*) FROM told) AS told FROM done
    """
)


def without_nul(value: Any) -> Any:
    """``value`` with NUL characters dropped from every string: PostgreSQL stores no NUL in
    text or jsonb, and a model's decoded bytes can contain one."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {without_nul(k): without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_nul(v) for v in value]
    return value


def output_json(output: BaseModel | dict[str, Any]) -> str:
    """An output as the JSON PostgreSQL will store: NUL characters dropped (see without_nul).
    A schema is encoded by pydantic's own serializer: for an embedding's 384 floats, 13 µs
    against 149 µs through ``model_dump`` and ``json.dumps`` (4 % of a worker's CPU). The walk
    runs only when the text holds an escaped NUL: walking the floats cost more than encoding."""
    if isinstance(output, BaseModel):
        # a lone surrogate makes pydantic raise; json.dumps escapes it and PostgreSQL refuses it by name
        with contextlib.suppress(ValueError):
            if "\\u0000" not in (encoded := output.model_dump_json()):
                return encoded
        output = output.model_dump(mode="json")
    encoded = json.dumps(output)
    return json.dumps(without_nul(output)) if "\\u0000" in encoded else encoded


def outcome_rows(outcomes: Sequence[Outcome]) -> str:
    """The outcomes as one JSON array for ``jsonb_to_recordset``, each output embedded as it
    was encoded once. One text parameter: psycopg dumped five arrays of 256 values in 4.7 ms
    of the worker's CPU (uuids are the dear part), this in 0.3 ms."""
    return (
        "["
        + ",".join(
            f'{{"id":"{o.job_id}","attempt":{int(o.attempt)},'
            f'"output":{"null" if o.output is None else output_json(o.output)},'
            f'"error_code":{json.dumps(o.error_code)},'
            f'"error_message":{json.dumps(None if o.error_message is None else without_nul(o.error_message))}}}'
            for o in outcomes
        )
        + "]"
    )


def uuid_array(ids: Sequence[uuid.UUID]) -> str:
    """Ids as PostgreSQL's array text (``{a,b}``) for ``CAST(:ids AS uuid[])``: psycopg dumps a
    list of 256 uuids in about 3 ms of CPU, this string in a few µs."""
    return "{" + ",".join(map(str, ids)) + "}"


def finish(session: Session, *, outcomes: Sequence[Outcome]) -> list[uuid.UUID]:
    """Write a batch of final results in one statement, fenced by attempt.

    Returns the ids that were written; an id missing from the answer was taken
    over by a newer attempt (or cancelled) and its outcome was discarded.
    """
    if not outcomes:
        return []
    notify_here = len(outcomes) <= NOTIFY_IDS_PER_MESSAGE  # one payload holds them all
    rows = session.execute(
        _FINISH_SQL, {"channel": NOTIFY_CHANNEL, "notify_here": notify_here, "rows": outcome_rows(outcomes)}
    ).all()
    written = [row.id for row in rows]
    if not notify_here:
        notify_finished(session, job_ids=written)
    enqueue_webhooks(
        session, job_ids=written, hooks=any(row.hook for row in rows), batches=any(row.in_batch for row in rows)
    )
    return written


RETRY_BASE_S = 2.0  # a job given back after a transient error waits this long before its second attempt,
RETRY_MAX_S = 300.0  # doubling per attempt up to this, times a random 0.5-1.5 (jitter)


def release(
    session: Session,
    *,
    job_ids: Sequence[uuid.UUID],
    attempts: Sequence[int],
    reason: str,
    retry_base_s: float = RETRY_BASE_S,
    retry_max_s: float = RETRY_MAX_S,
) -> None:
    """Give claimed jobs back to the queue after a transient failure, due again after an
    exponential backoff with jitter (the reconciler publishes them then). Jobs that used
    all their attempts fail with ``max_attempts_exceeded``."""
    rows = session.execute(
        text(
            """
            UPDATE jobs SET
                history = jobs.history || jsonb_build_object('attempt', jobs.attempt, 'worker', jobs.worker,
                    'started_at', jobs.started_at, 'ended_at', now(), 'reason', CAST(:reason AS text)),
                status = CASE WHEN jobs.attempt >= jobs.max_attempts THEN 'failed' ELSE 'queued' END,
                error_code = CASE WHEN jobs.attempt >= jobs.max_attempts
                                  THEN 'max_attempts_exceeded' END,
                error_message = :reason,
                finished_at = CASE WHEN jobs.attempt >= jobs.max_attempts THEN now() END,
                retry_at = CASE WHEN jobs.attempt < jobs.max_attempts THEN now() + make_interval(
                    secs => least(:retry_max_s, :retry_base_s * 2 ^ (jobs.attempt - 1)) * (0.5 + random())) END,
                lease_expires_at = NULL,
                updated_at = now()
            FROM unnest(CAST(:ids AS uuid[]), CAST(:attempts AS int[])) AS v(id, attempt)
            WHERE jobs.id = v.id AND jobs.attempt = v.attempt AND jobs.status = 'running'
            RETURNING jobs.id, jobs.status
            """
        ),
        {
            "ids": list(job_ids),
            "attempts": list(attempts),
            "reason": reason,
            "retry_base_s": retry_base_s,
            "retry_max_s": retry_max_s,
        },
    ).all()
    failed = [row.id for row in rows if row.status == JobStatus.failed.value]
    notify_finished(session, job_ids=failed)
    enqueue_webhooks(session, job_ids=failed)


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


def enqueue_webhooks(
    session: Session, *, job_ids: Sequence[uuid.UUID], hooks: bool = True, batches: bool = True
) -> None:
    """Outbox rows for finished jobs that asked for a webhook, and for their batches once the
    last item is done. The batch row is locked first, so two workers finishing a batch's last
    items at once cannot both miss (or both send) its webhook."""
    if not job_ids:
        return
    ids = list(job_ids)
    if hooks:  # ``hooks``/``batches`` False: the caller knows none asked / none is in a batch
        session.execute(_JOB_WEBHOOKS_SQL, {"ids": uuid_array(ids)})
    batch_ids = session.execute(_BATCH_LOCK_SQL, {"ids": uuid_array(ids)}).scalars().all() if batches else []
    if batch_ids:
        session.execute(_BATCH_WEBHOOKS_SQL, {"batch_ids": list(batch_ids)})


def notify_finished(session: Session, *, job_ids: Sequence[uuid.UUID]) -> None:
    """Tell long-polling API processes (LISTEN) that jobs finished; sent on commit."""
    for start in range(0, len(job_ids), NOTIFY_IDS_PER_MESSAGE):
        chunk = job_ids[start : start + NOTIFY_IDS_PER_MESSAGE]
        session.execute(select(func.pg_notify(NOTIFY_CHANNEL, ",".join(str(i) for i in chunk))))


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
