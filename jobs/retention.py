"""Retention: finished jobs, their artifacts and webhook outbox rows, and whole bulk runs are
pruned once their tenant's retention has passed (``retention_days``; a tenant may have its own,
``tenants.retention_days``; 0 keeps them forever).

- A single job goes by its own ``finished_at``; queued and running jobs are never touched,
  nor a job whose webhook is still pending.
- A bulk run goes as a whole, and only once every one of its jobs finished more than the
  retention ago (and its own webhook is sent): its jobs, then its row with its result files,
  and its uploaded input file when no other run uses it. Until then all its results stay
  readable.
- Every transaction deletes at most ``batch_rows`` jobs, found by walking an index from where
  the last one stopped (a tenant's ``jobs_tenant_created``, a run's ``jobs_batch_order``), so
  none rereads what was deleted before it and none holds its row locks for long. Rows locked
  by someone else are skipped (``SKIP LOCKED``): the next prune takes them.
- An uploaded file (OpenAI's Files API) goes with the last run that names it, or, when no run
  names it, once it is older than the retention.
- Artifact files leave the store after the transaction that deleted their rows commits; a
  crash in between leaves files without rows, never rows without files.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from jobs.artifacts import ArtifactStore
from jobs.db import make_engine, writing

log = logging.getLogger("mlq.retention")

BATCHES_PER_PAGE = 100  # bulk runs looked at per query
# The prune's own connection (``prune_engine``), for the prune's statements:
# - one plan each, made once: each walks an index from a cursor and deletes what it found by
#   ctid and id, whatever the values. Planned afresh (as the reconciler plans), planning the
#   jobs' statement cost 3.5 ms of PostgreSQL's CPU in a 5 ms transaction of 50 rows, which
#   submits beside it waited for (bench retention; tests/integration/test_retention_plans.py);
# - commits that wait for the disk, as every other write's: a step's files leave the artifact
#   store after its commit, and a commit that had not reached the disk could be lost in a crash
#   after its files went (rows without files). Waiting adds the disk's flush to each step (2-3.5
#   ms here, not CPU) and changes neither submit p99 beside the prune nor its rate (bench
#   retention, 50 rows, kept plans: x1.066-1.077 against x1.068-1.079, 928-931 jobs/s);
# - no JIT: the runs' page is costed by its jobs' walks, and PostgreSQL would compile it, 0.3 s
#   of a query that takes milliseconds.
# Each statement is a transaction of its own (``writing(one_statement=True)``): one round trip.
PRUNE_CONNECTION = {"plan_cache_mode": "force_generic_plan", "synchronous_commit": "on", "jit": "off"}
# Each prune starts by dropping the plans its connection kept, so they are made for the tables
# as they are then (PostgreSQL scales their row counts to their size on disk now): a plan made
# when the table held a few rows is not kept for the millions a month of retention brings.
FRESH_PLANS = text("DISCARD PLANS")
BEGINNING = (datetime(1, 1, 1, tzinfo=UTC), uuid.UUID(int=0))  # a cursor before every row


@dataclass
class Pruned:
    """What a prune removed."""

    jobs: int = 0
    artifacts: int = 0  # artifact rows; their files left the artifact store
    webhook_deliveries: int = 0  # outbox rows of the jobs and bulk runs removed
    batches: int = 0  # bulk runs removed whole
    files: int = 0  # rows of OpenAI's Files API: a run's result files, its uploaded input file
    transactions: int = 0  # each deleted at most batch_rows jobs
    seconds: float = 0.0

    def add(self, other: Pruned) -> None:
        for name in ("jobs", "artifacts", "webhook_deliveries", "batches", "files", "transactions"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# One statement per transaction: lock up to :n prunable jobs from the cursor on, delete their
# artifact rows, outbox rows and the jobs themselves (the foreign keys' cascades then find
# nothing left), and say what went. The jobs are found again by ctid, as the claim does; their
# artifacts and outbox rows by an array of ids, which keeps their lookups on the job_id
# indexes (joined to the CTE, the planner hashed a whole table at each transaction). Two
# texts, for single jobs (by tenant and creation) and a bulk run's (by line), written out:
# SQL is never assembled from strings here (tests/security/test_static.py).
SINGLE_JOBS = text(
    """
    WITH doomed AS (
        SELECT ctid, id AS job_id, created_at, id FROM jobs
        WHERE tenant_id = :tenant AND created_at < :cutoff AND (created_at, id) > (:after_at, :after_id)
          AND batch_id IS NULL AND finished_at < :cutoff
          AND status IN ('succeeded', 'failed', 'cancelled')
          AND NOT EXISTS (SELECT 1 FROM webhook_deliveries w WHERE w.job_id = jobs.id AND w.status = 'pending')
        ORDER BY created_at, id LIMIT :n FOR UPDATE SKIP LOCKED
    ), arts AS (
        DELETE FROM artifacts WHERE job_id = ANY(ARRAY(SELECT job_id FROM doomed)) RETURNING job_id
    ), hooks AS (
        DELETE FROM webhook_deliveries WHERE job_id = ANY(ARRAY(SELECT job_id FROM doomed)) RETURNING id
    ), gone AS (
        DELETE FROM jobs WHERE ctid = ANY(ARRAY(SELECT ctid FROM doomed)) RETURNING id
    ), last AS (
        SELECT created_at, id FROM doomed ORDER BY created_at DESC, id DESC LIMIT 1
    )
    SELECT (SELECT count(*) FROM gone) AS jobs, (SELECT count(*) FROM hooks) AS hooks,
           (SELECT count(*) FROM arts) AS artifacts,
           (SELECT coalesce(array_agg(DISTINCT job_id), '{}') FROM arts) AS artifact_jobs,
           (SELECT count(*) FROM doomed) AS taken, last.*
    FROM (SELECT 1) AS one LEFT JOIN last ON true
    """
)
BATCH_JOBS = text(
    """
    WITH doomed AS (
        SELECT ctid, id AS job_id, batch_index FROM jobs
        WHERE batch_id = :batch AND batch_index > :after_index
          AND status IN ('succeeded', 'failed', 'cancelled')
          AND NOT EXISTS (SELECT 1 FROM webhook_deliveries w WHERE w.job_id = jobs.id AND w.status = 'pending')
        ORDER BY batch_index LIMIT :n FOR UPDATE SKIP LOCKED
    ), arts AS (
        DELETE FROM artifacts WHERE job_id = ANY(ARRAY(SELECT job_id FROM doomed)) RETURNING job_id
    ), hooks AS (
        DELETE FROM webhook_deliveries WHERE job_id = ANY(ARRAY(SELECT job_id FROM doomed)) RETURNING id
    ), gone AS (
        DELETE FROM jobs WHERE ctid = ANY(ARRAY(SELECT ctid FROM doomed)) RETURNING id
    ), last AS (
        SELECT batch_index FROM doomed ORDER BY batch_index DESC LIMIT 1
    )
    SELECT (SELECT count(*) FROM gone) AS jobs, (SELECT count(*) FROM hooks) AS hooks,
           (SELECT count(*) FROM arts) AS artifacts,
           (SELECT coalesce(array_agg(DISTINCT job_id), '{}') FROM arts) AS artifact_jobs,
           (SELECT count(*) FROM doomed) AS taken, last.*
    FROM (SELECT 1) AS one LEFT JOIN last ON true
    """
)

# Runs of a tenant created before the cutoff whose every job finished before it, and whose own
# webhook is not pending: one walk of each run's jobs by jobs_batch_order. (A scalar subquery,
# not NOT EXISTS: as an anti-join the planner read the whole jobs table for its few unfinished
# rows, at every page.)
PRUNABLE_BATCHES = text(
    """
    SELECT b.id, b.created_at FROM batches b
    WHERE b.tenant_id = :tenant AND b.created_at < :cutoff AND (b.created_at, b.id) > (:after_at, :after_id)
      AND (SELECT j.id FROM jobs j WHERE j.batch_id = b.id
             AND (j.status NOT IN ('succeeded', 'failed', 'cancelled') OR j.finished_at IS NULL
                  OR j.finished_at >= :cutoff)
           LIMIT 1) IS NULL
      AND NOT EXISTS (SELECT 1 FROM webhook_deliveries w WHERE w.batch_id = b.id AND w.status = 'pending')
    ORDER BY b.created_at, b.id LIMIT :limit
    """
)

# The run's row once its jobs are gone, with its result files and outbox row, and its uploaded
# input file when no other run names it. Returns the input file's uri, to remove its bytes.
DELETE_BATCH = text(
    """
    WITH b AS (
        SELECT id, input_file_id FROM batches
        WHERE id = :batch AND NOT EXISTS (SELECT 1 FROM jobs WHERE batch_id = :batch)
        FOR UPDATE SKIP LOCKED
    ), results AS (
        DELETE FROM files f USING b WHERE f.batch_id = b.id RETURNING f.id, f.uri
    ), hooks AS (
        DELETE FROM webhook_deliveries w USING b WHERE w.batch_id = b.id RETURNING w.id
    ), gone AS (
        DELETE FROM batches USING b WHERE batches.id = b.id RETURNING batches.id
    ), input AS (
        DELETE FROM files f USING b
        WHERE f.id = b.input_file_id AND f.batch_id IS NULL
          AND NOT EXISTS (SELECT 1 FROM batches o WHERE o.input_file_id = f.id AND o.id <> b.id)
        RETURNING f.id, f.uri
    )
    SELECT (SELECT count(*) FROM gone) AS batches, (SELECT count(*) FROM hooks) AS hooks,
           (SELECT count(*) FROM results) + (SELECT count(*) FROM input) AS files,
           ARRAY(SELECT id FROM results WHERE uri IS NOT NULL UNION ALL SELECT id FROM input WHERE uri IS NOT NULL)
               AS stored
    """
)


# Uploaded files (OpenAI's Files API) that no bulk run names, older than the retention: an
# upload a run used goes with its last run (DELETE_BATCH). Walks files_tenant_created.
UNUSED_UPLOADS = text(
    """
    WITH doomed AS (
        SELECT id, created_at FROM files f
        WHERE f.tenant_id = :tenant AND f.created_at < :cutoff AND (f.created_at, f.id) > (:after_at, :after_id)
          AND f.batch_id IS NULL AND NOT EXISTS (SELECT 1 FROM batches b WHERE b.input_file_id = f.id)
        ORDER BY f.created_at, f.id LIMIT :n FOR UPDATE SKIP LOCKED
    ), gone AS (
        DELETE FROM files USING doomed WHERE files.id = doomed.id RETURNING files.id, files.uri
    ), last AS (
        SELECT created_at, id FROM doomed ORDER BY created_at DESC, id DESC LIMIT 1
    )
    SELECT (SELECT count(*) FROM doomed) AS taken, (SELECT count(*) FROM gone) AS files,
           ARRAY(SELECT id FROM gone WHERE uri IS NOT NULL) AS stored, last.*
    FROM (SELECT 1) AS one LEFT JOIN last ON true
    """
)


def prune_engine(url: str) -> Engine:
    """A connection of the prune's own (``PRUNE_CONNECTION``), beside the reconciler's."""
    return make_engine(url, pool_size=1, server_settings=PRUNE_CONNECTION)


def tenants_to_prune(session: Session, *, retention_days: int) -> list[tuple[uuid.UUID, datetime]]:
    """Each tenant whose jobs expire, with its cutoff on PostgreSQL's clock: its own
    ``retention_days``, else the deployment's; 0 keeps them forever."""
    rows = session.execute(
        text(
            """
            SELECT id, now() - make_interval(days => days) AS cutoff
            FROM (SELECT id, coalesce(retention_days, :default) AS days FROM tenants) t
            WHERE days > 0 ORDER BY id
            """
        ),
        {"default": retention_days},
    ).all()
    return [(r.id, r.cutoff) for r in rows]


class Pruner:
    """Prunes what retention has passed, in transactions of at most ``batch_rows`` jobs.
    ``sessions``: of ``prune_engine`` in a deployment (any work; those make it cheap)."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        artifacts: ArtifactStore,
        retention_days: int,
        batch_rows: int = 1000,
        pause_s: float = 0.0,
    ) -> None:
        if batch_rows < 1:
            raise ValueError(f"batch_rows must be at least 1, not {batch_rows}")
        self.sessions = sessions
        self.artifacts = artifacts
        self.retention_days = retention_days
        self.batch_rows = batch_rows
        self.pause_s = pause_s  # between transactions: leaves the database to the hot path

    def prune(self) -> Pruned:
        started = time.monotonic()
        done = Pruned()
        with self.sessions.begin() as session:
            session.execute(FRESH_PLANS)
            tenants = tenants_to_prune(session, retention_days=self.retention_days)
        for tenant_id, cutoff in tenants:
            mine = Pruned()
            mine.add(self.prune_batches(tenant_id=tenant_id, cutoff=cutoff))
            mine.add(self.prune_single_jobs(tenant_id=tenant_id, cutoff=cutoff))
            mine.add(self.prune_unused_uploads(tenant_id=tenant_id, cutoff=cutoff))
            if mine.jobs or mine.batches or mine.files:
                log.info(
                    "tenant %s: pruned %d jobs, %d artifacts, %d webhook deliveries, %d bulk runs, %d files "
                    "finished before %s", tenant_id, mine.jobs, mine.artifacts, mine.webhook_deliveries,
                    mine.batches, mine.files, cutoff.isoformat(timespec="seconds"),
                )  # fmt: skip
            done.add(mine)
        done.seconds = round(time.monotonic() - started, 3)
        return done

    def prune_single_jobs(self, *, tenant_id: uuid.UUID, cutoff: datetime) -> Pruned:
        done = Pruned()
        self._walk(tenant_id=tenant_id, cutoff=cutoff, each=lambda params: self._delete_jobs(SINGLE_JOBS, params, done))
        return done

    def prune_unused_uploads(self, *, tenant_id: uuid.UUID, cutoff: datetime) -> Pruned:
        done = Pruned()

        def each(params: dict[str, Any]) -> Any:
            with writing(self.sessions, one_statement=True) as session:
                row = session.execute(UNUSED_UPLOADS, {**params, "n": self.batch_rows}).one()
            done.transactions += 1
            self._remove_stored(row.stored)
            done.files += row.files
            return row

        self._walk(tenant_id=tenant_id, cutoff=cutoff, each=each)
        return done

    def _walk(self, *, tenant_id: uuid.UUID, cutoff: datetime, each: Any) -> None:
        """Call ``each`` with a tenant's cursor from its first row on, a transaction of at most
        ``batch_rows`` each time, until one takes fewer (the row it returns says where it ended)."""
        after_at, after_id = BEGINNING
        while True:
            row = each({"tenant": tenant_id, "cutoff": cutoff, "after_at": after_at, "after_id": after_id})
            if row.taken < self.batch_rows:
                return
            after_at, after_id = row.created_at, row.id

    def prune_batches(self, *, tenant_id: uuid.UUID, cutoff: datetime) -> Pruned:
        done = Pruned()
        after_at, after_id = BEGINNING
        while True:
            with writing(self.sessions, one_statement=True) as session:
                page = session.execute(
                    PRUNABLE_BATCHES,
                    {"tenant": tenant_id, "cutoff": cutoff, "after_at": after_at, "after_id": after_id,
                     "limit": BATCHES_PER_PAGE},
                ).all()  # fmt: skip
            for batch_id, _ in page:
                self.prune_batch(batch_id, done)
            if len(page) < BATCHES_PER_PAGE:
                return done
            after_at, after_id = page[-1].created_at, page[-1].id

    def prune_batch(self, batch_id: uuid.UUID, done: Pruned) -> None:
        """A run's jobs in chunks, then its row and files (kept if a job of it is still there)."""
        jobs_before = done.jobs
        after_index = -1
        while True:
            row = self._delete_jobs(BATCH_JOBS, {"batch": batch_id, "after_index": after_index}, done)
            if row.taken < self.batch_rows:
                break
            after_index = row.batch_index
        with writing(self.sessions, one_statement=True) as session:
            gone = session.execute(DELETE_BATCH, {"batch": batch_id}).one()
        done.transactions += 1
        self._remove_stored(gone.stored)
        done.batches += gone.batches
        done.webhook_deliveries += gone.hooks
        done.files += gone.files
        if gone.batches:
            log.info("bulk run %s pruned: %d jobs, %d files", batch_id, done.jobs - jobs_before, gone.files)

    def _delete_jobs(self, statement: Any, params: dict[str, Any], done: Pruned) -> Any:
        with writing(self.sessions, one_statement=True) as session:
            row = session.execute(statement, {**params, "n": self.batch_rows}).one()
        done.transactions += 1
        self._remove_stored(row.artifact_jobs)
        done.jobs += row.jobs
        done.artifacts += row.artifacts
        done.webhook_deliveries += row.hooks
        if self.pause_s and row.taken:
            time.sleep(self.pause_s)
        return row

    def _remove_stored(self, owners: Sequence[uuid.UUID]) -> None:
        """Files in the artifact store, kept under the id of the job (or uploaded file) they belong to."""
        for owner in owners:
            try:
                self.artifacts.discard(job_id=owner)
            except OSError as exc:  # a store that is away: the rows are gone; the files stay behind
                log.warning("artifacts of %s not removed from the store: %s", owner, exc)
