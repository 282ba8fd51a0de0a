"""Store functions for OpenAI's Files API: uploaded batch inputs (their bytes in the artifact
store) and the output and error files of a bulk run (rows without bytes: their lines are
the run's jobs, read when asked for)."""

from __future__ import annotations

import uuid
from typing import Literal

from sqlalchemy import ColumnElement, delete, exists, or_, select
from sqlalchemy.orm import Session

from jobs.store import past, position
from jobs.tables import Batch, File, Job

Part = Literal["output", "error"]
UNFINISHED = ("queued", "running")


def insert_file(
    session: Session, *, file_id: uuid.UUID, tenant_id: uuid.UUID, purpose: str, filename: str, size: int, uri: str
) -> File:
    row = File(id=file_id, tenant_id=tenant_id, purpose=purpose, filename=filename, bytes=size, uri=uri)
    session.add(row)
    session.flush()
    session.refresh(row)  # created_at, as PostgreSQL set it
    return row


def add_result_files(session: Session, *, batch: Batch) -> None:
    """The output and error files of an OpenAI batch, made with it (shown once it is done)."""
    for part in ("output", "error"):
        row = File(
            id=uuid.uuid4(),
            tenant_id=batch.tenant_id,
            purpose="batch_output",
            filename=f"batch_{batch.id}_{part}.jsonl",
            batch_id=batch.id,
            part=part,
        )
        session.add(row)
        session.flush()
        setattr(batch, f"{part}_file_id", row.id)


def _shown(tenant_id: uuid.UUID) -> list[ColumnElement[bool]]:
    """A tenant's files that exist for it now: a result file only once its run is done."""
    running = exists().where(Job.batch_id == File.batch_id, Job.status.in_(UNFINISHED))
    return [File.tenant_id == tenant_id, or_(File.batch_id.is_(None), ~running)]


def get_file(session: Session, *, tenant_id: uuid.UUID, file_id: uuid.UUID) -> File | None:
    return session.execute(select(File).where(File.id == file_id, *_shown(tenant_id))).scalar_one_or_none()


def list_files(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    limit: int,
    after: uuid.UUID | None = None,
    purpose: str | None = None,
    newest_first: bool = True,
) -> tuple[list[File], bool]:
    """A page of files and whether more follow: after the file ``after`` (the last one seen),
    in creation order. Raises ValueError when ``after`` is not one of the tenant's files."""
    stmt = select(File).where(*_shown(tenant_id))
    if purpose is not None:
        stmt = stmt.where(File.purpose == purpose)
    if after is not None:
        seen = position(session, File, tenant_id=tenant_id, row_id=after)
        stmt = stmt.where(past(File, seen, after, newest_first=newest_first))
    order = (File.created_at.desc(), File.id.desc()) if newest_first else (File.created_at, File.id)
    rows = list(session.execute(stmt.order_by(*order).limit(limit + 1)).scalars())
    return rows[:limit], len(rows) > limit


def delete_file(session: Session, *, tenant_id: uuid.UUID, file_id: uuid.UUID) -> File | None:
    """Remove a file's row (the caller removes an upload's bytes after the commit)."""
    row = get_file(session, tenant_id=tenant_id, file_id=file_id)
    if row is not None:
        session.execute(delete(File).where(File.id == file_id))
    return row
