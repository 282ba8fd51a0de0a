"""Store functions for bulk runs: a COPY-speed insert of their jobs, counts, and results
streamed from PostgreSQL in input order (cancelling one is in ``jobs.lifecycle``).

A batch's counts and status are read from its jobs, never stored twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from psycopg import sql
from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from jobs import fairness
from jobs.status import JobStatus
from jobs.store import decode_cursor, encode_cursor, past, position
from jobs.tables import Batch, Job

COPY_COLUMNS = (
    "id", "tenant_id", "kind", "model", "profile", "status", "priority", "input", "metadata",
    "attempt", "max_attempts", "batch_id", "batch_index", "custom_id", "error_code", "error_message",
    "finished_at", "fair_vt",
)  # fmt: skip


class BatchItem(NamedTuple):
    """One validated line, ready to store: ``input_json`` is already serialized.
    (A named tuple: 100,000 of these are made per bulk run.) A line of OpenAI's Batch API that
    broke a rule is stored too, as a job that ``failed`` with ``invalid_input``: ``refusal``."""

    id: uuid.UUID
    line: int  # line number, from 1
    custom_id: str | None
    kind: str
    model: str
    profile: str
    input_json: str
    max_attempts: int
    metadata_json: str = "{}"
    refusal: str | None = None


@dataclass(frozen=True)
class Counts:
    total: int
    queued: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    last_finished_at: datetime | None = None
    last_minute: int = 0  # finished in the last 60 s: the run's current rate, its share of the workers

    @property
    def eta_s(self) -> float | None:
        """Seconds until the run is done at its rate of the last minute (None: nothing finished)."""
        return round(self.unfinished * 60 / self.last_minute, 1) if self.last_minute and self.unfinished else None

    @property
    def unfinished(self) -> int:
        return self.queued + self.running


def insert_batch(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    priority: int,
    metadata: dict[str, Any],
    webhook_url: str | None = None,
    idempotency_key: str | None = None,
) -> Batch | None:
    """The batch row; its jobs follow through :func:`copy_jobs` in the same transaction. None
    when the tenant used ``idempotency_key`` before (:func:`get_batch_by_key` finds that batch):
    a run with the same key still being stored elsewhere is waited for, so only one is stored."""
    inserted = session.execute(
        pg_insert(Batch)
        .values(
            id=uuid.uuid4(),
            tenant_id=tenant_id,
            kind=None,
            total=0,
            priority=priority,
            metadata=metadata,
            webhook_url=webhook_url,
            idempotency_key=idempotency_key,
        )
        .on_conflict_do_nothing(constraint="batches_tenant_idempotency_key")
        .returning(Batch.id)
    ).scalar_one_or_none()
    return None if inserted is None else session.get(Batch, inserted)


def get_batch_by_key(session: Session, *, tenant_id: uuid.UUID, idempotency_key: str) -> Batch | None:
    return session.execute(
        select(Batch).where(Batch.tenant_id == tenant_id, Batch.idempotency_key == idempotency_key)
    ).scalar_one_or_none()


@contextmanager
def copy_jobs(session: Session, *, batch: Batch, kinds: Iterable[str]) -> Iterator[Callable[[BatchItem], None]]:
    """A writer that streams jobs of ``batch`` to PostgreSQL with COPY while the caller is
    still validating: PostgreSQL stores rows while Python checks the next lines. Nothing is
    visible until the transaction commits; an exception rolls every row back. Each job of
    ``kinds`` gets its place in the queue (jobs/fairness.py)."""
    place = fairness.run_places(session, tenant_id=batch.tenant_id, priority=batch.priority, kinds=kinds)
    placed: dict[str, int] = {}
    raw = session.connection().connection.driver_connection
    statement = sql.SQL("COPY jobs ({}) FROM STDIN").format(sql.SQL(", ").join(map(sql.Identifier, COPY_COLUMNS)))
    queued, tenant_id, priority = JobStatus.queued.value, batch.tenant_id, batch.priority
    failed, refused_at = JobStatus.failed.value, batch.created_at
    with raw.cursor() as cursor, cursor.copy(statement) as copy:  # type: ignore[union-attr]

        def write(item: BatchItem) -> None:
            if item.refusal is None:
                index = placed[item.kind] = placed.get(item.kind, -1) + 1
                copy.write_row((
                    item.id, tenant_id, item.kind, item.model, item.profile, queued, priority,
                    item.input_json, item.metadata_json, 0, item.max_attempts, batch.id, item.line,
                    item.custom_id, None, None, None, place(item.kind, index),
                ))  # fmt: skip
            else:
                copy.write_row((
                    item.id, tenant_id, item.kind, item.model, item.profile, failed, priority,
                    item.input_json, item.metadata_json, 0, item.max_attempts, batch.id, item.line,
                    item.custom_id, "invalid_input", item.refusal, refused_at, 0.0,
                ))  # fmt: skip

        yield write


def get_batch(session: Session, *, tenant_id: uuid.UUID, batch_id: uuid.UUID) -> Batch | None:
    return session.execute(select(Batch).where(Batch.id == batch_id, Batch.tenant_id == tenant_id)).scalar_one_or_none()


def counts(session: Session, *, batch_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Counts]:
    """Job counts by status for each batch, when its last job finished and how many did in the
    last minute, in one query."""
    recent = func.count().filter(Job.finished_at > func.now() - text("interval '60 seconds'"))
    rows = session.execute(
        select(Job.batch_id, Job.status, func.count(), func.max(Job.finished_at), recent)
        .where(Job.batch_id.in_(list(batch_ids)))
        .group_by(Job.batch_id, Job.status)
    ).all()
    found: dict[uuid.UUID, dict[str, int]] = {b: {} for b in batch_ids}
    last: dict[uuid.UUID, datetime] = {}
    minute: dict[uuid.UUID, int] = {}
    for batch_id, status, n, finished_at, lately in rows:
        found[batch_id][status] = n  # type: ignore[index]  # the WHERE excludes NULL batch ids
        minute[batch_id] = minute.get(batch_id, 0) + lately  # type: ignore[index,arg-type]
        if finished_at is not None and (batch_id not in last or finished_at > last[batch_id]):
            last[batch_id] = finished_at  # type: ignore[index]
    return {
        b: Counts(total=sum(c.values()), last_finished_at=last.get(b), last_minute=minute.get(b, 0), **c)
        for b, c in found.items()
    }


def status_of(batch: Batch, tally: Counts) -> str:
    """in_progress, completed (every item finished), failed (every item failed),
    cancelling (cancel asked, items still running) or cancelled."""
    if batch.cancel_requested_at is not None:
        return "cancelling" if tally.unfinished else "cancelled"
    if tally.unfinished:
        return "in_progress"
    return "failed" if tally.failed == tally.total and tally.total else "completed"


def list_batches(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    limit: int = 20,
    cursor: str | None = None,
    after: uuid.UUID | None = None,
) -> tuple[list[Batch], str | None]:
    """Newest first, a page at a time: after ``cursor`` (mlq's) or after the run ``after``
    (OpenAI's: the id of the last one seen). Raises ValueError for either that is not one."""
    stmt = select(Batch).where(Batch.tenant_id == tenant_id)
    if after is not None:
        stmt = stmt.where(past(Batch, position(session, Batch, tenant_id=tenant_id, row_id=after), after))
    elif cursor is not None:
        stmt = stmt.where(past(Batch, *decode_cursor(cursor)))
    rows = list(session.execute(stmt.order_by(Batch.created_at.desc(), Batch.id.desc()).limit(limit + 1)).scalars())
    return rows[:limit], (encode_cursor(rows[limit - 1]) if len(rows) > limit else None)


_RESULTS_SQL = """
SELECT json_build_object(
    'custom_id', j.custom_id,
    'line', j.batch_index,
    'job_id', j.id,
    'status', j.status,
    'output', j.output,
    'error', CASE WHEN j.error_code IS NULL THEN NULL
                  ELSE json_build_object('code', j.error_code, 'message', j.error_message) END,
    'artifacts', (SELECT json_agg('/v1/jobs/' || j.id || '/artifacts/' || a.name ORDER BY a.name)
                  FROM artifacts a WHERE a.job_id = j.id AND a.name NOT LIKE 'input-%')
)::text
FROM jobs j
WHERE j.batch_id = :batch_id AND j.tenant_id = :tenant_id
  AND (CAST(:status AS text) IS NULL OR j.status = CAST(:status AS text))
ORDER BY j.batch_index
"""


def stream_results(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    batch_id: uuid.UUID,
    status: JobStatus | None = None,
    rows_per_fetch: int = 5000,
) -> Iterator[str]:
    """JSON lines in input order, built by PostgreSQL and read with a server-side cursor."""
    query = text(_RESULTS_SQL)
    params: dict[str, Any] = {"batch_id": batch_id, "tenant_id": tenant_id, "status": status.value if status else None}
    result = session.execute(query.execution_options(stream_results=True, yield_per=rows_per_fetch), params)
    for partition in result.partitions(rows_per_fetch):
        yield "".join(row[0] + "\n" for row in partition)
