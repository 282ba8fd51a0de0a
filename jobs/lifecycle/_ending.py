"""What goes with every end of a job, in the transaction that ends it."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from jobs import webhooks
from jobs.db import NOTIFY_CHANNEL

NOTIFY_IDS_PER_MESSAGE = 200  # 200 uuids stay well under PostgreSQL's 8000-byte payload limit


def ended(
    session: Session,
    *,
    job_ids: Sequence[uuid.UUID],
    notified: bool = False,
    hooks: bool = True,
    in_bulk_runs: bool = True,
) -> None:
    """What every job that ends brings with it, in the transaction that ends it: long polls
    woken (unless the ending statement ``notified`` them itself) and the webhook outbox
    written (``hooks``/``in_bulk_runs`` False: the caller knows none asked / none is in a run)."""
    if not job_ids:
        return
    if not notified:
        notify_finished(session, job_ids=job_ids)
    webhooks.write_outbox(session, job_ids=job_ids, hooks=hooks, batches=in_bulk_runs)


def notify_finished(session: Session, *, job_ids: Sequence[uuid.UUID]) -> None:
    """Tell long-polling API processes (LISTEN) that jobs finished; sent on commit."""
    for start in range(0, len(job_ids), NOTIFY_IDS_PER_MESSAGE):
        chunk = job_ids[start : start + NOTIFY_IDS_PER_MESSAGE]
        session.execute(select(func.pg_notify(NOTIFY_CHANNEL, ",".join(str(i) for i in chunk))))
