"""Group commit for single jobs: the submissions that arrive while one commit is in flight
go into the next, as one INSERT and one COMMIT, then one broker message per kind and
priority (under load, shared with the next groups: see ``Intake._wake``).

At idle a group is one job and nothing waits; under load a group holds what arrived
during the previous commit, so the per-job cost of the transaction, the fsync and the
Celery publish falls as the load rises (issue #5: the API's share of a job's CPU).

Each submission still gets its own answer: a 429 for what is over a limit, a 409 for a
reused Idempotency-Key, the committed row otherwise. A value PostgreSQL refuses fails
only the job it belongs to: the group is inserted again one job at a time to find it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from sqlalchemy.exc import DataError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from jobs import keys, metrics, store
from jobs.artifacts import ArtifactStore, StoredArtifact
from jobs.errors import Conflict, InvalidField, OverLimit
from jobs.settings import Settings
from producer.publish import Publisher
from producer.ratelimit import ACTIVE_RETRY_AFTER_S, RateLimiter

log = logging.getLogger("mlq.intake")

# tests/faults only: "1" makes the process SIGKILL itself after a commit, before its publish
CRASH_BEFORE_PUBLISH = os.environ.get("MLQ_FAULT_CRASH_BEFORE_PUBLISH") == "1"
MAX_GROUP = 256  # submissions per transaction; more wait for the next
PUBLISH_AFTER_IDS = 32  # under load, a kind's jobs share a wake-up message up to this many ...
PUBLISH_AFTER_S = 0.01  # ... or until the oldest has waited this long for it


@dataclass
class Submission:
    """A validated job on its way in: the row to insert and the files already stored for it."""

    job: store.NewJob
    principal: keys.Principal
    files: list[StoredArtifact] = field(default_factory=list)


Answer = tuple[store.JobRow, bool] | Exception  # (the row, created) or what to raise for this submission


class Intake:
    """Accepts submissions from the event loop; commits them in groups on a worker thread."""

    def __init__(
        self,
        *,
        settings: Settings,
        sessions: sessionmaker[Session],
        publisher: Publisher,
        limiter: RateLimiter,
        artifacts: ArtifactStore,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.publisher = publisher
        self.limiter = limiter
        self.artifacts = artifacts
        self._pending: list[tuple[Submission, asyncio.Future[tuple[store.JobRow, bool]]]] = []
        self._draining: asyncio.Task[None] | None = None
        self.groups = Counter[int]()  # group size → how many groups of that size (for tests and benchmarks)
        self._unpublished: dict[tuple[str, int], list[uuid.UUID]] = defaultdict(list)  # committed, no message yet
        self._unpublished_since = time.monotonic()

    async def accept(self, submission: Submission) -> tuple[store.JobRow, bool]:
        """The committed row and whether it is new; raises this submission's refusal. Its wake-up
        message is sent after the commit, at once at idle, with the next groups' under load."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[tuple[store.JobRow, bool]] = loop.create_future()
        self._pending.append((submission, answer))
        if self._draining is None:
            self._draining = loop.create_task(self._drain(), name="mlq-intake")
        return await answer

    async def _drain(self) -> None:
        try:
            while self._pending:
                group, self._pending = self._pending[:MAX_GROUP], self._pending[MAX_GROUP:]
                try:
                    answers = await run_in_threadpool(self.commit, [s for s, _ in group])
                except Exception as exc:  # PostgreSQL away: every submission of the group gets it (503)
                    answers = [exc] * len(group)
                for (submission, future), answer in zip(group, answers, strict=True):
                    if submission.files and (isinstance(answer, Exception) or not answer[1]):
                        self.artifacts.discard(job_id=submission.job.id)  # stored for a row that is not
                    if future.done():  # the client went away; the job stands
                        continue
                    if isinstance(answer, Exception):
                        future.set_exception(answer)
                    else:
                        future.set_result(answer)
        finally:
            self._draining = None

    def commit(self, group: list[Submission]) -> list[Answer]:
        """Limits, one INSERT and COMMIT, then the wake-up messages (see ``_wake``). Blocking."""
        self.groups[len(group)] += 1
        try:
            answers = self._insert(group)
        except BaseException:  # PostgreSQL away: what earlier groups committed still gets its message
            self._wake(flush=True)
            raise
        self._accepted(group, answers)
        if CRASH_BEFORE_PUBLISH and self._unpublished:  # committed, not yet published
            os.kill(os.getpid(), signal.SIGKILL)
        self._wake(flush=not self._pending)
        return answers

    def _insert(self, group: list[Submission]) -> list[Answer]:
        answers: list[Answer | None] = list(self._refusals(group))
        admitted = [i for i, a in enumerate(answers) if a is None]
        try:
            rows = store.accept_jobs(
                self.sessions,
                jobs=[(group[i].principal.tenant_id, group[i].job) for i in admitted],
                files=[group[i].files for i in admitted],
            )
        except DataError:  # a value PostgreSQL refuses: find whose, one job at a time
            return self._one_by_one(group, answers, admitted)
        for n, i in enumerate(admitted):
            answers[i] = _checked(group[i], rows[n])
        return [a for a in answers if a is not None]

    def _one_by_one(self, group: list[Submission], answers: list[Answer | None], admitted: list[int]) -> list[Answer]:
        for i in admitted:
            try:
                [row] = store.accept_jobs(
                    self.sessions, jobs=[(group[i].principal.tenant_id, group[i].job)], files=[group[i].files]
                )
                answers[i] = _checked(group[i], row)
            except DataError as exc:
                log.info("job refused by PostgreSQL: %s", exc.orig)
                answers[i] = InvalidField(
                    ("body",), f"the job cannot be stored: {str(exc.orig or exc).splitlines()[0]}"
                )
        return [a for a in answers if a is not None]

    def _refusals(self, group: list[Submission]) -> list[Exception | None]:
        """429 for each submission over its tenant's active-jobs quota or minute limit (in arrival
        order: the first ones of a group fit), None for the rest."""
        refusals: list[Exception | None] = [None] * len(group)
        by_kind: dict[tuple[uuid.UUID, str], list[int]] = defaultdict(list)
        for i, s in enumerate(group):
            by_kind[(s.principal.tenant_id, s.job.kind)].append(i)
        for indexes in by_kind.values():
            for i, refusal in zip(indexes, self._over_quota([group[i] for i in indexes]), strict=True):
                refusals[i] = refusal
        by_tenant: dict[uuid.UUID, list[int]] = defaultdict(list)
        for i, s in enumerate(group):
            if refusals[i] is None:
                by_tenant[s.principal.tenant_id].append(i)
        for indexes in by_tenant.values():
            for i, refusal in zip(indexes, self._over_rate([group[i] for i in indexes]), strict=True):
                refusals[i] = refusal
        return refusals

    def _over_quota(self, same_kind: list[Submission]) -> list[Exception | None]:
        """One tenant's submissions of one kind against its quota of active jobs."""
        principal, kind = same_kind[0].principal, same_kind[0].job.kind
        limit = principal.max_active_jobs_per_kind
        limit = self.settings.max_active_jobs_per_kind if limit is None else limit
        if not limit:
            return [None] * len(same_kind)

        def count() -> int:
            with self.sessions() as session:
                return store.active_jobs(session, tenant_id=principal.tenant_id, kind=kind)

        active = self.limiter.active(tenant_id=principal.tenant_id, kind=kind, count=count)
        return [
            None
            if active + n < limit
            else OverLimit(
                f"this tenant has {active + n} {kind} jobs queued or running; the limit is "
                f"max_active_jobs_per_kind={limit}: wait for some to finish, or send a bulk run",
                retry_after_s=ACTIVE_RETRY_AFTER_S,
            )
            for n in range(len(same_kind))
        ]

    def _over_rate(self, same_tenant: list[Submission]) -> list[Exception | None]:
        """One tenant's submissions against its jobs per minute."""
        own = same_tenant[0].principal.jobs_per_minute
        per_minute = self.settings.jobs_per_minute if own is None else own
        tenant_id = same_tenant[0].principal.tenant_id
        fit, retry_after_s = self.limiter.admit(tenant_id=tenant_id, jobs=len(same_tenant), per_minute=per_minute)
        detail = f"over this tenant's limit of jobs_per_minute={per_minute}; retry in {retry_after_s} s"
        return [None if n < fit else OverLimit(detail, retry_after_s=retry_after_s) for n in range(len(same_tenant))]

    def _accepted(self, group: list[Submission], answers: list[Answer]) -> None:
        """Count the jobs created (metrics, quotas) and set them aside for a wake-up message."""
        for s, a in zip(group, answers, strict=True):
            if isinstance(a, tuple) and a[1]:
                if not self._unpublished:
                    self._unpublished_since = time.monotonic()
                self._unpublished[(a[0].kind, a[0].priority)].append(a[0].id)
                metrics.JOBS_SUBMITTED.labels(a[0].kind, s.principal.tenant_name).inc()
                self.limiter.accepted(tenant_id=s.principal.tenant_id, kind=a[0].kind)

    def _wake(self, *, flush: bool) -> None:
        """Publish the jobs set aside, one message per kind and priority.

        With more submissions waiting (``flush`` False), a kind's jobs wait for the next group's
        commit, up to PUBLISH_AFTER_IDS of them or PUBLISH_AFTER_S. A kombu publish costs the API
        about 0.75 ms of CPU, and each message is a Celery task in a worker that fills its batch
        from PostgreSQL anyway; sharing them took the API from 1.55-1.59 to 1.13-1.43 ms per job
        (bench/README.md). At idle nothing waits: the queue is empty, so ``flush`` is True.
        A crash before the message leaves the jobs ``queued``: the reconciler publishes them."""
        overdue = flush or time.monotonic() - self._unpublished_since >= PUBLISH_AFTER_S
        for key in list(self._unpublished):
            if overdue or len(self._unpublished[key]) >= PUBLISH_AFTER_IDS:
                ids = self._unpublished.pop(key)
                self.publisher.publish(kind=key[0], job_ids=ids, priority=key[1])


def _checked(submission: Submission, answer: tuple[store.JobRow, bool]) -> Answer:
    """A replayed Idempotency-Key must name the same job: 409 when it named another."""
    row, created = answer
    new = submission.job
    if not created and (row.kind != new.kind or row.input != new.input):
        return Conflict(f"Idempotency-Key {new.idempotency_key!r} was already used for a different job ({row.id})")
    return answer
