"""The runner: claim → prepare → predict → store, as plain functions of plain objects.

Celery tasks hand it job ids and return; tests call it without Celery.
Per job: a bad input fails that job alone (``invalid_input``); a model error in
a model call is retried item by item so only the culprit fails; a transient error
gives the jobs back to the queue.

Words: a *claim* is the jobs one worker takes at once (a bulk run's message, or single
jobs filled up to ``max_batch_size``); a *model call* is one ``predict`` on some of them
(``max_batch_size`` items at most); a *bulk run* is what a user submits as one file.

Around it, hooks (workers/hooks.py: the claim's leases, each model call's time limits and
cancel requests, the claim's metrics and logs, the fault tests' hold). Beside it: ``loaded``
(the process's models), ``watch`` (the thread that keeps leases and time limits), ``calls``
(a claim cut into model calls), ``outcomes`` (how attempts end, errors told apart),
``results`` (a claim's results written, counted and logged).
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker

from jobs import lifecycle, store
from jobs.artifacts import ArtifactStore
from jobs.errors import (
    Cancelled,
    InvalidInput,
    MlqError,
    ModelError,
    OutOfMemory,
    PermanentError,
    RetryableError,
    TimedOut,
)
from jobs.kinds import get_kind
from jobs.modelsfile import ModelsConfig
from jobs.schemas import Schema, binaries
from models.base import Adapter, StopSignal
from workers.calls import UNKNOWN_CALL_COST_TOKENS, budgeted
from workers.hooks import HOLD_BEFORE_STORE, Call, Claim, HoldBeforeStore, Hook, Hooks
from workers.loaded import LoadedModels
from workers.outcomes import (
    Done,
    Failed,
    cut_to_find_fault,
    has_files,
    is_out_of_memory,
    is_sticky_device_error,
    validation_message,
    warn_unread,
)
from workers.results import ClaimMetrics, RunReport, write_results
from workers.watch import Beside, KeepLeases, WatchCalls

log = logging.getLogger("mlq.runner")


TIME_LIMIT_EXIT_CODE = 75  # a pool process that exits with this ran past a time limit
DEVICE_ERROR_EXIT_CODE = 76  # ... or lost its GPU context (illegal memory access and the like)


class Runner:
    """Runs one worker process's jobs: claim → prepare → predict → store, a claim at a time.
    Around each claim, ``hooks`` (its leases, its calls' time limits and cancel requests, its
    metrics and logs); beside it, the loaded models (``loaded``) and the thread that keeps
    leases, time limits and cancel requests (``beside``); the result write with its retries
    is workers/results.py."""

    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        models: ModelsConfig,
        artifacts: ArtifactStore,
        data_dir: Path,
        worker: str,
        lease_s: float,
        fill: bool = True,
        memory_budget_bytes: int = 0,
        allow_unpinned: bool = False,
    ) -> None:
        self.fill = fill  # fill each claim with other queued jobs of the kind (micro-batching)
        self.sessions = sessions
        self.loaded = LoadedModels(
            models=models, data_dir=data_dir, memory_budget_bytes=memory_budget_bytes, allow_unpinned=allow_unpinned
        )
        self.artifacts = artifacts
        self.worker = worker
        self.lease_s = lease_s
        self.beside = Beside(sessions, lease_s=lease_s)  # leases, time limits and cancel requests
        hooks: list[Hook] = [
            KeepLeases(self.beside),
            WatchCalls(self.beside, on_hard_limit=self._over_time_limit),
            ClaimMetrics(worker=worker),
        ]
        if HOLD_BEFORE_STORE:
            hooks.append(HoldBeforeStore(HOLD_BEFORE_STORE))
        self.hooks = Hooks(hooks)
        self._running: Claim | None = None  # the claim running now: what give_up records when the process must exit

    def adapter(self, kind: str) -> Adapter[Any, Any]:
        """The loaded adapter of ``kind`` (workers/loaded.py)."""
        return self.loaded.get(kind)

    def run(self, *, kind: str, job_ids: Sequence[uuid.UUID | str]) -> RunReport:
        """Run these jobs (those still queued) in claims: each is claimed, predicted in model
        calls and committed before the next, so a crash loses at most one claim's work.

        A claim holds a message's jobs up to the kind's ``batch_chunk_size`` (a bulk run's
        message: hundreds, one claim and one result write for them all), or fills up to
        ``max_batch_size`` with other queued jobs (single jobs: few). A model call holds
        ``max_batch_size`` at most."""
        ids = [uuid.UUID(str(i)) for i in job_ids]
        try:
            adapter = self.adapter(kind)
        except PermanentError as exc:  # e.g. no model configured: say so on each job rather than leave it queued
            return self.fail_unrunnable(kind=kind, job_ids=ids, error=exc)
        report = RunReport()
        spec = adapter.spec
        size = max(spec.max_batch_size, min(len(ids), spec.batch_chunk_size))
        for start in range(0, len(ids), size):
            self._run_claim(adapter, ids[start : start + size], size, report)
        return report

    def _run_claim(self, adapter: Adapter[Any, Any], ids: list[uuid.UUID], size: int, report: RunReport) -> None:
        claim = self._claim(adapter, ids, size)
        report.claimed += len(claim.jobs)
        if not claim.jobs:
            return
        self.hooks.started(claim)
        self._running = claim
        try:
            with self.hooks.around(claim):
                self.process(adapter, claim)
                self.hooks.before_store(claim)
                self._store(claim)
        finally:
            self._running = None
        self.hooks.ended(claim)
        report.add(claim)

    def _claim(self, adapter: Adapter[Any, Any], ids: list[uuid.UUID], size: int) -> Claim:
        """Claim these jobs (filled up to ``size`` with other queued ones), with their stored files."""
        kind = adapter.kind
        claimed = lifecycle.claim_jobs(
            self.sessions, job_ids=ids, kind=kind, worker=self.worker, lease_s=self.lease_s,
            fill_to=size if self.fill else 0,
        )  # fmt: skip
        files: dict[tuple[uuid.UUID, str], str] = {}
        if has_files(claimed, kind=get_kind(kind)):
            with self.sessions() as session:
                files = store.artifact_uris(session, job_ids=[c.id for c in claimed])
        return Claim(spec=adapter.spec, jobs=claimed, files=files)

    def _store(self, claim: Claim) -> None:
        """The claim's files put in the artifact store, then its results written together
        (workers/results.py)."""
        stored = [
            (o.job.id, self.artifacts.put(job_id=o.job.id, name=b.name, data=b.data, content_type=b.content_type))
            for o in claim.outcomes
            if isinstance(o, Done)
            for b in o.prediction.blobs
        ]
        claim.written, claim.outcomes = write_results(
            self.sessions, claim.outcomes, stored, claim.retry, lease_s=self.lease_s
        )

    def give_up(self, culprits: Sequence[lifecycle.Claimed], *, code: str, message: str, exit_code: int) -> None:
        """Record the jobs this process can no longer run, then exit so Celery replaces it.
        A lone culprit fails with ``code``; several go back to the queue, and, having lost an
        attempt, run alone next time, so only the one at fault fails. The rest of the claim is
        recorded too: results already computed (without files) are written, the others go back."""
        claimed, outcomes = (self._running.jobs, self._running.outcomes) if self._running else (culprits, [])
        mine = {c.id for c in culprits}
        done = [o for o in outcomes if not (isinstance(o, Done) and o.prediction.blobs)]
        recorded = mine | {o.job.id for o in done}
        others = [c for c in claimed if c.id not in recorded]
        try:
            with self.sessions.begin() as session:
                lifecycle.finish(session, outcomes=[o.outcome() for o in done if o.job.id not in mine])
                if len(culprits) == 1:
                    only = culprits[0]
                    lifecycle.finish(session, outcomes=[
                        lifecycle.Outcome(job_id=only.id, attempt=only.attempt, error_code=code, error_message=message)
                    ])  # fmt: skip
                else:
                    lifecycle.give_back(
                        session,
                        job_ids=[c.id for c in culprits],
                        attempts=[c.attempt for c in culprits],
                        reason=f"{code} in a model call of several jobs ({message}); each runs alone next",
                    )
                if others:
                    lifecycle.give_back(
                        session,
                        job_ids=[c.id for c in others],
                        attempts=[c.attempt for c in others],
                        reason=f"its worker process was replaced after {code} of other jobs of its claim",
                    )
        finally:
            os._exit(exit_code)

    def _over_time_limit(self, claim: Claim, call: Call) -> None:
        """A model call past its kind's hard time limit (``WatchCalls``): its jobs recorded, the process replaced."""
        over = f"ran longer than the time limit of {claim.spec.time_limit_s:.0f}s for this kind"
        self.give_up(call.jobs, code="timed_out", message=over, exit_code=TIME_LIMIT_EXIT_CODE)

    def fail_unrunnable(self, *, kind: str, job_ids: list[uuid.UUID], error: PermanentError) -> RunReport:
        log.error("jobs %s: cannot load the %s model: %s", ",".join(map(str, job_ids)), kind, error)
        claimed = lifecycle.claim_jobs(
            self.sessions, job_ids=job_ids, kind=kind, worker=self.worker, lease_s=self.lease_s
        )
        message = str(error)
        lifecycle.record(
            self.sessions,
            outcomes=[
                lifecycle.Outcome(c.id, c.attempt, error_code=error.code, error_message=message, follow_up=c.follow_up)
                for c in claimed
            ],
        )
        return RunReport(claimed=len(claimed), failed=len(claimed))

    def process(self, adapter: Adapter[Any, Any], claim: Claim) -> None:
        """Prepare the claim's jobs, predict on the good ones in calls: ``claim.outcomes``
        (what a process that must exit records first, ``give_up``) and ``claim.retry``."""
        outcomes, retry = claim.outcomes, claim.retry
        ready = self._prepared(adapter, claim.jobs, files=claim.files, outcomes=outcomes)
        call_cost = self.loaded.call_costs.get(adapter.kind, UNKNOWN_CALL_COST_TOKENS)
        for group in budgeted(adapter, ready, call_cost_tokens=call_cost):
            call = Call(jobs=[job for job, _ in group], interruptible=adapter.interruptible)
            with self.hooks.around_call(claim, call):
                self._predict(adapter, group, outcomes, retry, stop=call.stop)
        if adapter.spec.languages:
            warn_unread(outcomes, languages=adapter.spec.languages, model=adapter.spec.model)

    def _prepared(
        self,
        adapter: Adapter[Any, Any],
        claimed: Sequence[lifecycle.Claimed],
        *,
        files: dict[tuple[uuid.UUID, str], str],
        outcomes: list[Done | Failed],
    ) -> list[tuple[lifecycle.Claimed, Any]]:
        """Each job's input checked alone, then prepared together (``prepare_many``); when that
        raises, one by one, so a bad input fails its own job alone."""
        kind = get_kind(adapter.kind)
        valid: list[tuple[lifecycle.Claimed, Schema]] = []
        for job in claimed:
            try:
                item = kind.validate_input(job.input, limits=adapter.spec.limits)
                self._resolve_files(item, job_id=job.id, files=files)
                valid.append((job, item))
            except ValidationError as exc:
                outcomes.append(Failed(job, InvalidInput.code, validation_message(exc)))
            except PermanentError as exc:
                outcomes.append(Failed(job, exc.code, str(exc)))
        if not valid:
            return []
        try:
            return list(zip([job for job, _ in valid], adapter.prepare_many([item for _, item in valid]), strict=True))
        except PermanentError:
            pass
        ready = []
        for job, item in valid:
            try:
                ready.append((job, adapter.prepare(item)))
            except PermanentError as exc:
                outcomes.append(Failed(job, exc.code, str(exc)))
        return ready

    def _resolve_files(self, item: Schema, *, job_id: uuid.UUID, files: dict[tuple[uuid.UUID, str], str]) -> None:
        """Put the stored bytes of each binary input field into the item."""
        for name, value in binaries(item):
            uri = files.get((job_id, value.artifact or ""))
            if uri is None:
                raise InvalidInput(f"input.{name}: the uploaded file {value.artifact!r} is missing")
            value.resolve(self.artifacts.open(uri))

    def _predict(
        self,
        adapter: Adapter[Any, Any],
        ready: list[tuple[lifecycle.Claimed, Any]],
        outcomes: list[Done | Failed],
        retry: list[tuple[lifecycle.Claimed, str]],
        *,
        stop: StopSignal,
    ) -> None:
        """Predict; on out-of-memory try the halves, on a model error each item alone,
        so only what cannot run fails; other transient errors send the jobs back."""
        if not ready:
            return
        try:
            predictions = adapter.predict([item for _, item in ready], stop=stop)
            if len(predictions) != len(ready):
                raise ModelError(f"adapter returned {len(predictions)} results for {len(ready)} inputs")
            outcomes.extend(Done(job, p) for (job, _), p in zip(ready, predictions, strict=True))
            return
        except Exception as raised:
            if is_sticky_device_error(raised):  # the CUDA context is gone: nothing here can run again
                log.error("jobs %s: device failed for good: %s", ",".join(str(j.id) for j, _ in ready), raised)
                self.give_up(
                    [job for job, _ in ready],
                    code="device_error",
                    message=f"{type(raised).__name__}: {raised}",
                    exit_code=DEVICE_ERROR_EXIT_CODE,
                )
            error = OutOfMemory(str(raised)) if is_out_of_memory(raised) else raised
        if isinstance(error, TimedOut | Cancelled):  # the whole slice was asked to stop
            outcomes.extend(Failed(job, error.code, str(error)) for job, _ in ready)
            return
        transient = isinstance(error, RetryableError)
        if len(ready) > 1 and (isinstance(error, OutOfMemory) or not transient):
            for part in cut_to_find_fault(ready, halves=isinstance(error, OutOfMemory)):
                self._predict(adapter, part, outcomes, retry, stop=stop)
        elif transient:
            retry.extend((job, f"{error.code}: {error}") for job, _ in ready)  # type: ignore[attr-defined]
        else:
            job = ready[0][0]
            log.error("job %s: model raised %s", job.id, error, exc_info=error)
            code = error.code if isinstance(error, MlqError) else ModelError.code
            outcomes.append(Failed(job, code, f"{type(error).__name__}: {error}"))
