"""running → succeeded, failed or cancelled: a claim's results in one statement, fenced by attempt."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.orm import Session

from jobs.db import NOTIFY_CHANNEL
from jobs.lifecycle._ending import NOTIFY_IDS_PER_MESSAGE, ended
from jobs.pgvalues import output_json, without_nul


@dataclass(frozen=True)
class Outcome:
    """The end of one attempt: an output, or an error code and message."""

    job_id: uuid.UUID
    attempt: int
    output: BaseModel | dict[str, Any] | None = None  # a kind's output schema (the runner) or plain JSON
    error_code: str | None = None
    error_message: str | None = None
    follow_up: bool = True  # its end writes more than its row (Claimed.follow_up): a webhook, a bulk run's


# Rows are found by primary key, whatever the queue's state: the statements that end or renew a
# claim's jobs by id compare ``status COLLATE "C"``, which the partial index of running jobs
# (``jobs_running_lease``) does not match. With ``status = 'running'`` and no statistics (a
# fresh table, autovacuum behind), PostgreSQL bitmap-scanned that index for every entry it
# still held, dead ones of finished jobs included: 31,000 index entries and 2,900 heap pages
# read to finish 256 jobs, 25 % of a bulk run's PostgreSQL time (bench fairness, #20).
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
        WHERE jobs.id = v.id AND jobs.attempt = v.attempt AND jobs.status COLLATE "C" = 'running'
        RETURNING jobs.id, jobs.webhook_url IS NOT NULL AS hook, jobs.batch_id IS NOT NULL AS in_batch
    ), told AS (  -- the wake-up for long polls, in the same round trip (sent on commit)
        SELECT pg_notify(:channel, string_agg(id::text, ',')) FROM done WHERE CAST(:notify_here AS boolean)
    )
    SELECT done.id, done.hook, done.in_batch, (SELECT count(*) FROM told) AS told FROM done
    """
)


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
    ended(
        session,
        job_ids=written,
        notified=notify_here,
        hooks=any(row.hook for row in rows),
        in_bulk_runs=any(row.in_batch for row in rows),
    )
    return written
