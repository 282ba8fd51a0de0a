"""Store functions of the reconciler: find queued jobs whose wake-up was lost, and those whose
backoff has passed, to publish again (expired leases are taken back in ``jobs.lifecycle``)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import text
from sqlalchemy.orm import Session

from jobs.lifecycle import Waiting


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
                ORDER BY priority DESC, fair_vt LIMIT :limit FOR UPDATE SKIP LOCKED
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
