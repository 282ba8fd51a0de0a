"""A claim's results: written (one statement when it can, retried while PostgreSQL is away, the
job whose value PostgreSQL refuses found and failed alone), then counted and logged."""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from jobs import lifecycle, metrics
from jobs.artifacts import StoredArtifact
from jobs.backoff import backoff_s
from jobs.errors import Cancelled
from jobs.logs import job_fields
from workers.hooks import Claim, Hook
from workers.outcomes import RESULT_NOT_STORABLE, Done, Failed, cut_to_find_fault, is_transient_db_error
from workers.watch import ids_of

log = logging.getLogger("mlq.runner")

STORE_RETRY_BASE_S = 0.2  # first pause before a result write is tried again while PostgreSQL is away
STORE_RETRY_MAX_S = 5.0  # the longest
# How long a claim's computed results wait for PostgreSQL (a lease, when longer): a restart, or a
# standby promoted after the primary's loss, takes seconds to a minute. Nobody can take the jobs
# back meanwhile (the reconciler needs PostgreSQL too, and gives leases a grace once it is back).
STORE_WAIT_S = 120.0


@dataclass
class RunReport:
    claimed: int = 0
    succeeded: int = 0
    failed: int = 0
    released: int = 0
    discarded: list[uuid.UUID] = field(default_factory=list)  # outcomes a newer attempt superseded

    def add(self, claim: Claim) -> None:
        """Count a stored claim's jobs."""
        for o in claim.outcomes:
            if o.job.id not in claim.written:
                self.discarded.append(o.job.id)
            elif isinstance(o, Done):
                self.succeeded += 1
            else:
                self.failed += 1  # cancelled ones too
        self.released += len(claim.retry)


class ClaimMetrics(Hook):
    """A claim's metrics and logs: queue wait and size when it starts; once stored, its jobs
    counted and timed, one log line for its successes (their ids at DEBUG), one for each
    failure, one for each result a newer attempt superseded; the process's memory."""

    def __init__(self, *, worker: str) -> None:
        self.worker = worker

    def started(self, claim: Claim) -> None:
        wait = metrics.QUEUE_WAIT.labels(claim.kind, claim.model)
        for job in claim.jobs:
            wait.observe(job.waited_s)
        metrics.BATCH_SIZE.labels(claim.kind).observe(len(claim.jobs))

    def ended(self, claim: Claim) -> None:
        reported(claim, worker=self.worker)
        metrics.record_process_memory()


def write_results(
    sessions: sessionmaker[Session],
    outcomes: list[Done | Failed],
    stored: list[tuple[uuid.UUID, StoredArtifact]],
    retry: list[tuple[lifecycle.Claimed, str]],
    *,
    lease_s: float,
) -> tuple[set[uuid.UUID], list[Done | Failed]]:
    """Write a claim's results together (``lifecycle.record``). While PostgreSQL is away (a
    restart, a failover) the write is tried again with backoff for up to ``STORE_WAIT_S`` (or a
    lease), so computed results are not thrown away; the attempt fence makes a late write
    harmless. Returns the ids written and the outcomes as stored (a result PostgreSQL refused
    becomes a ``result_not_storable`` failure)."""
    deadline = time.monotonic() + max(lease_s, STORE_WAIT_S)
    tries = 0
    storing_failures = False
    while True:
        try:
            finished = lifecycle.record(
                sessions,
                outcomes=[o.outcome() for o in outcomes],
                artifacts=stored,
                given_back=[(c.id, c.attempt) for c, _ in retry],
                reason=retry[0][1] if retry else "",
            )
            return set(finished), outcomes
        except Exception as exc:
            if isinstance(exc, DBAPIError) and not is_transient_db_error(exc) and not storing_failures:
                # PostgreSQL refused the results themselves (a value it cannot store). Find the
                # job whose result it is by halves, so the others keep theirs; fail that one
                # saying so, rather than leave it running to be retried into the same wall.
                if len(outcomes) > 1:
                    written, kept = set(), []
                    for index, part in enumerate(cut_to_find_fault(outcomes, halves=True)):
                        ids = {o.job.id for o in part}
                        mine = [a for a in stored if a[0] in ids]
                        again = retry if index == 0 else []
                        done, result = write_results(sessions, part, mine, again, lease_s=lease_s)
                        written |= done
                        kept += result
                    return written, kept
                log.error("job %s: result refused by PostgreSQL: %s", outcomes[0].job.id, exc)
                message = f"the result could not be stored: {str(exc.orig or exc).splitlines()[0][:300]}"
                outcomes = [Failed(o.job, RESULT_NOT_STORABLE, message) for o in outcomes]
                stored = []
                storing_failures = True
                continue
            pause_s = backoff_s(tries, base_s=STORE_RETRY_BASE_S, max_s=STORE_RETRY_MAX_S, jitter=False)
            if not is_transient_db_error(exc) or time.monotonic() + pause_s > deadline:
                raise
            log.warning(
                "jobs %s: result write failed (%s); trying again in %.1fs",
                ",".join(str(o.job.id) for o in outcomes), exc, pause_s,
            )  # fmt: skip
            time.sleep(pause_s)
            tries += 1


def reported(claim: Claim, *, worker: str) -> None:
    """``ClaimMetrics.ended``: a stored claim's metrics and logs."""
    kind, elapsed_s, size = claim.kind, claim.elapsed_s(), len(claim.jobs)
    finished: Counter[tuple[str, str, str]] = Counter()
    succeeded = []
    for o in claim.outcomes:
        if o.job.id not in claim.written:
            log.warning("job %s attempt %d: result discarded, a newer attempt owns the job", o.job.id, o.job.attempt)
        elif isinstance(o, Done):
            succeeded.append(o.job)
            finished[(o.job.tenant, "succeeded", "")] += 1
        else:
            status = "cancelled" if o.code == Cancelled.code else "failed"
            finished[(o.job.tenant, status, o.code)] += 1
            log.info(
                "job %s %s failed: %s: %s", o.job.id, kind, o.code, o.message,
                extra=job_fields(job_id=o.job.id, kind=kind, tenant=o.job.tenant, attempt=o.job.attempt,
                                 worker=worker, duration_s=round(elapsed_s, 4), batch_size=size,
                                 error_code=o.code),
            )  # fmt: skip
    for (tenant, status, code), n in finished.items():
        metrics.JOBS_FINISHED.labels(kind, tenant, status, code).inc(n)
    run_time = metrics.RUN_TIME.labels(kind, claim.model)
    for _ in range(sum(finished.values())):
        run_time.observe(elapsed_s)
    if succeeded:
        shared = {
            name: values.pop()
            for name, values in (
                ("tenant", {j.tenant for j in succeeded}),
                ("attempt", {j.attempt for j in succeeded}),
            )
            if len(values) == 1
        }
        log.info(
            "%d %s jobs succeeded in %.3fs (claim of %d)", len(succeeded), kind, elapsed_s, size,
            extra=job_fields(kind=kind, duration_s=round(elapsed_s, 4), batch_size=size,
                             worker=worker, job_ids=[j.id for j in succeeded], **shared),
        )  # fmt: skip
        log.debug("succeeded: %s", ids_of(succeeded))
