"""The runner: claim → prepare → predict → store, as plain functions of plain objects.

Celery tasks hand it job ids and return; tests call it without Celery.
Per job: a bad input fails that job alone (``invalid_input``); a model error on
a batch is retried item by item so only the culprit fails; a transient error
gives the jobs back to the queue.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from jobs import metrics, reconcile, store
from jobs.artifacts import ArtifactStore, StoredArtifact
from jobs.db import single_statements
from jobs.errors import (
    Cancelled,
    InvalidInput,
    MlqError,
    ModelError,
    ModelNotConfigured,
    OutOfMemory,
    PermanentError,
    RetryableError,
    TimedOut,
)
from jobs.kinds import BinaryInput, Schema, get_kind
from jobs.logs import job_fields
from jobs.modelsfile import ModelsConfig, ModelSpec
from models.base import Adapter, Prediction, StopSignal
from models.loading import pick_device
from models.registry import create_adapter
from workers.calls import UNKNOWN_CALL_COST_TOKENS, budgeted, call_cost_tokens

log = logging.getLogger("mlq.runner")


RESULT_NOT_STORABLE = "result_not_storable"  # error code when PostgreSQL refuses a result's values
CANCEL_POLL_S = 1.0  # how often a running generation looks for a cancel request
STORE_RETRY_MAX_S = 5.0  # longest pause between tries of a result write while PostgreSQL is away
TIME_LIMIT_EXIT_CODE = 75  # a pool process that exits with this ran past a time limit
DEVICE_ERROR_EXIT_CODE = 76  # ... or lost its GPU context (illegal memory access and the like)
STICKY_DEVICE_ERRORS = (  # CUDA errors after which the process's context cannot be used again
    "illegal memory access",
    "device-side assert",
    "unspecified launch failure",
    "misaligned address",
    "CUDA error: an illegal instruction",
    "uncorrectable ECC error",
)


@dataclass
class RunReport:
    claimed: int = 0
    succeeded: int = 0
    failed: int = 0
    released: int = 0
    discarded: list[uuid.UUID] = field(default_factory=list)  # outcomes a newer attempt superseded


class Runner:
    """Holds one worker process's loaded adapters and runs batches of job ids."""

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
    ) -> None:
        self.fill = fill  # fill each slice with other queued jobs of the kind (micro-batching)
        self.sessions = sessions
        self.statements = single_statements(sessions)  # for the claim and a lone result write
        self.models = models
        self.artifacts = artifacts
        self.data_dir = data_dir
        self.worker = worker
        self.lease_s = lease_s
        self.adapters: dict[str, Adapter[Any]] = {}
        self.memory_budget_bytes = memory_budget_bytes  # 0: keep every model loaded
        self.footprints: dict[str, int] = {}
        self.call_costs: dict[str, float] = {}  # kind -> a model call's cost in padded tokens (workers.calls)
        self.last_used: dict[str, float] = {}

    def _fields(self, job: store.Claimed, kind: str, **more: Any) -> dict[str, Any]:
        """A job's log fields (JSON logs carry them; see jobs.logs)."""
        return job_fields(
            job_id=job.id, kind=kind, tenant=job.tenant, attempt=job.attempt, worker=self.worker,
            **{k: round(v, 4) if isinstance(v, float) else v for k, v in more.items()},
        )  # fmt: skip

    def spec(self, kind: str) -> ModelSpec:
        spec = self.models.spec(kind)
        if spec is None:
            raise ModelNotConfigured(f"the models file {self.models.source} has no model for {kind!r}")
        return spec

    def adapter(self, kind: str) -> Adapter[Any]:
        """The loaded adapter of ``kind``, loading it on first use (and, over the memory
        budget, unloading the models used longest ago first)."""
        self.last_used[kind] = time.monotonic()
        if kind not in self.adapters:
            spec = self.spec(kind)
            started = time.perf_counter()
            adapter = create_adapter(spec, data_dir=self.data_dir)
            adapter.load(pick_device(spec.device))
            load_s = time.perf_counter() - started
            self.call_costs[kind] = call_cost_tokens(adapter)
            self.adapters[kind] = adapter
            self.footprints[kind] = adapter.footprint_bytes()
            metrics.MODEL_LOAD.labels(kind, spec.model).set(load_s)
            log.info(
                "loaded %s model %s on %s in %.2fs (%.0f MiB)",
                kind, spec.model, adapter.device, load_s, self.footprints[kind] / 2**20,
            )  # fmt: skip
            self._keep_to_budget(keep=kind)
            metrics.record_process_memory()
        return self.adapters[kind]

    def _keep_to_budget(self, *, keep: str) -> None:
        """Unload least-recently-used models until the loaded ones fit the budget (the one
        just needed always stays, even alone over it)."""
        if not self.memory_budget_bytes:
            return
        while sum(self.footprints.values()) > self.memory_budget_bytes and len(self.adapters) > 1:
            oldest = min((k for k in self.adapters if k != keep), key=lambda k: self.last_used.get(k, 0.0))
            unloaded = self.adapters.pop(oldest)
            freed = self.footprints.pop(oldest)
            del unloaded
            _release_memory()
            log.info("unloaded %s model (%.0f MiB) to stay within the memory budget", oldest, freed / 2**20)

    def run(self, *, kind: str, job_ids: Sequence[uuid.UUID | str]) -> RunReport:
        """Run these jobs (those still queued) in slices of the kind's ``max_batch_size``:
        each slice is claimed, predicted and committed before the next, so a long chunk
        shows progress and a crash loses at most one slice's work."""
        ids = [uuid.UUID(str(i)) for i in job_ids]
        try:
            adapter = self.adapter(kind)
        except PermanentError as exc:  # e.g. no model configured: say so on each job rather than leave it queued
            return self.fail_unrunnable(kind=kind, job_ids=ids, error=exc)
        report = RunReport()
        size = adapter.spec.max_batch_size
        for start in range(0, len(ids), size):
            self._run_slice(adapter, ids[start : start + size], report)
        return report

    def _run_slice(self, adapter: Adapter[Any], ids: list[uuid.UUID], report: RunReport) -> None:
        kind = adapter.kind
        with self.statements.begin() as session:  # one statement (and a read of file locations)
            claimed = store.claim(
                session, job_ids=ids, kind=kind, worker=self.worker, lease_s=self.lease_s,
                fill_to=adapter.spec.max_batch_size if self.fill else 0,
            )  # fmt: skip
            files = store.artifact_uris(session, job_ids=[c.id for c in claimed]) if _has_files(claimed) else {}
        report.claimed += len(claimed)
        if not claimed:
            return
        model = adapter.spec.model
        for job in claimed:
            metrics.QUEUE_WAIT.labels(kind, model).observe(job.waited_s)
        metrics.BATCH_SIZE.labels(kind).observe(len(claimed))
        started = time.perf_counter()
        stop = adapter.stop = StopSignal()
        interruptible = stop if adapter.interruptible else None
        with self._leases_kept(claimed, cancel=interruptible):
            with self._time_limited(claimed, spec=adapter.spec, soft=interruptible):
                outcomes, retry = self.process(adapter, claimed, files=files)
            stored = [
                (o.job.id, self.artifacts.put(job_id=o.job.id, name=b.name, data=b.data, content_type=b.content_type))
                for o in outcomes
                if isinstance(o, _Done)
                for b in o.prediction.blobs
            ]
            written, outcomes = self._store(outcomes, stored, retry)
        elapsed_s = time.perf_counter() - started
        for o in outcomes:
            if o.job.id not in written:
                report.discarded.append(o.job.id)
                log.warning(
                    "job %s attempt %d: result discarded, a newer attempt owns the job", o.job.id, o.job.attempt
                )
            elif isinstance(o, _Done):
                report.succeeded += 1
                metrics.JOBS_FINISHED.labels(kind, o.job.tenant, "succeeded", "").inc()
                metrics.RUN_TIME.labels(kind, model).observe(elapsed_s)
                log.info(
                    "job %s %s succeeded in %.3fs (batch of %d)", o.job.id, kind, elapsed_s, len(claimed),
                    extra=self._fields(o.job, kind, duration_s=elapsed_s, batch_size=len(claimed)),
                )  # fmt: skip
            else:
                report.failed += 1
                status = "cancelled" if o.code == Cancelled.code else "failed"
                metrics.JOBS_FINISHED.labels(kind, o.job.tenant, status, o.code).inc()
                metrics.RUN_TIME.labels(kind, model).observe(elapsed_s)
                log.info(
                    "job %s %s failed: %s: %s", o.job.id, kind, o.code, o.message,
                    extra=self._fields(o.job, kind, duration_s=elapsed_s, batch_size=len(claimed), error_code=o.code),
                )  # fmt: skip
        report.released += len(retry)
        metrics.record_process_memory()

    def _store(
        self,
        outcomes: list[_Done | _Failed],
        stored: list[tuple[uuid.UUID, StoredArtifact]],
        retry: list[tuple[store.Claimed, str]],
    ) -> tuple[set[uuid.UUID], list[_Done | _Failed]]:
        """Write a slice's results in one transaction. While PostgreSQL is away (a restart) the
        write is tried again with backoff for up to a lease, so computed results are not thrown
        away; the attempt fence makes a late write harmless. Returns the ids written and the
        outcomes as stored (a result PostgreSQL refused becomes a ``result_not_storable`` failure)."""
        deadline = time.monotonic() + self.lease_s
        pause_s = 0.2
        storing_failures = False
        # The finish statement alone (it carries its NOTIFY) needs no transaction; files,
        # jobs given back, webhooks and bulk-run bookkeeping are written with it in one.
        alone = not stored and not retry and len(outcomes) <= store.NOTIFY_IDS_PER_MESSAGE
        sessions = self.statements if alone and not any(o.job.follow_up for o in outcomes) else self.sessions
        while True:
            try:
                with sessions.begin() as session:
                    written = set(store.finish(session, outcomes=[o.outcome() for o in outcomes]))
                    store.add_artifacts(session, rows=[(job_id, a) for job_id, a in stored if job_id in written])
                    if retry:
                        store.release(
                            session,
                            job_ids=[c.id for c, _ in retry],
                            attempts=[c.attempt for c, _ in retry],
                            reason=retry[0][1],
                        )
                return written, outcomes
            except Exception as exc:
                if isinstance(exc, DBAPIError) and not is_transient_db_error(exc) and not storing_failures:
                    # PostgreSQL refused the results themselves (a value it cannot store). Find the
                    # job whose result it is, one write each, so the others keep theirs; fail that
                    # one saying so, rather than leave it running to be retried into the same wall.
                    if len(outcomes) > 1:
                        written, kept = set(), []
                        for index, one in enumerate(outcomes):
                            mine = [a for a in stored if a[0] == one.job.id]
                            done, result = self._store([one], mine, retry if index == 0 else [])
                            written |= done
                            kept += result
                        return written, kept
                    log.error("job %s: result refused by PostgreSQL: %s", outcomes[0].job.id, exc)
                    message = f"the result could not be stored: {str(exc.orig or exc).splitlines()[0][:300]}"
                    outcomes = [_Failed(o.job, RESULT_NOT_STORABLE, message) for o in outcomes]
                    stored = []
                    storing_failures = True
                    continue
                if not is_transient_db_error(exc) or time.monotonic() + pause_s > deadline:
                    raise
                log.warning(
                    "jobs %s: result write failed (%s); trying again in %.1fs",
                    ",".join(str(o.job.id) for o in outcomes), exc, pause_s,
                )  # fmt: skip
                time.sleep(pause_s)
                pause_s = min(STORE_RETRY_MAX_S, pause_s * 2)

    @contextmanager
    def _time_limited(
        self, claimed: Sequence[store.Claimed], *, spec: ModelSpec, soft: StopSignal | None
    ) -> Iterator[None]:
        """Time limits. At the soft limit an interruptible model (``soft`` given) is asked to stop
        between steps: its jobs fail ``timed_out`` and the process goes on. Past the hard limit
        the jobs are recorded and this process exits, so Celery replaces it (native code cannot
        be interrupted safely). A lone job fails with ``timed_out``; a batch goes back to the
        queue, and its jobs, having lost an attempt, run alone next time, so only the one that
        hangs fails."""
        done = threading.Event()
        limit_s = spec.time_limit_s

        def watchdog() -> None:
            if soft is not None:
                if done.wait(spec.soft_limit_s):
                    return
                log.warning("jobs %s: past the soft time limit of %.0fs; stopping", _ids(claimed), spec.soft_limit_s)
                soft.request(TimedOut(f"stopped at the soft time limit of {spec.soft_limit_s:g}s for this kind"))
                if done.wait(limit_s - spec.soft_limit_s):
                    return
            elif done.wait(limit_s):
                return
            log.error("jobs %s: over the time limit of %.0fs", ",".join(str(c.id) for c in claimed), limit_s)
            self.give_up(
                claimed,
                code="timed_out",
                message=f"ran longer than the time limit of {limit_s:.0f}s for this kind",
                exit_code=TIME_LIMIT_EXIT_CODE,
            )

        thread = threading.Thread(target=watchdog, name="mlq-time-limit", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()

    def give_up(self, claimed: Sequence[store.Claimed], *, code: str, message: str, exit_code: int) -> None:
        """Record the jobs this process can no longer run, then exit so Celery replaces it.
        A lone job fails with ``code``; a batch goes back to the queue, and its jobs, having
        lost an attempt, run alone next time, so only the culprit fails."""
        try:
            with self.sessions.begin() as session:
                if len(claimed) == 1:
                    only = claimed[0]
                    store.finish(session, outcomes=[
                        store.Outcome(job_id=only.id, attempt=only.attempt, error_code=code, error_message=message)
                    ])  # fmt: skip
                else:
                    store.release(
                        session,
                        job_ids=[c.id for c in claimed],
                        attempts=[c.attempt for c in claimed],
                        reason=f"{code} in a batch ({message}); each job runs alone next",
                    )
        finally:
            os._exit(exit_code)

    @contextmanager
    def _leases_kept(self, claimed: Sequence[store.Claimed], *, cancel: StopSignal | None) -> Iterator[None]:
        """Renew the claimed jobs' leases every third of a lease while they run, so a slow
        job is never taken back from a live worker; a dead worker stops renewing. With
        ``cancel``, also look every CANCEL_POLL_S for cancel requests: when every job of the
        slice has one, the model is asked to stop between steps."""
        stop = threading.Event()
        ids = [c.id for c in claimed]
        renew_every_s = self.lease_s / 3

        def beat() -> None:
            renew_at = time.monotonic() + renew_every_s
            while not stop.wait(min(CANCEL_POLL_S, renew_every_s) if cancel else renew_every_s):
                try:
                    with self.sessions.begin() as session:
                        if (
                            cancel is not None
                            and not cancel.is_set()
                            and len(store.cancel_requested(session, job_ids=ids)) == len(ids)
                        ):
                            log.info("jobs %s: cancelled while running; stopping", _ids(claimed))
                            cancel.request(Cancelled("cancelled while it ran; stopped between steps"))
                        if time.monotonic() >= renew_at:
                            renew_at += renew_every_s
                            reconcile.extend_leases(
                                session, job_ids=ids, attempts=[c.attempt for c in claimed], lease_s=self.lease_s
                            )
                except Exception as exc:  # the next beat tries again; the lease has slack
                    log.warning("jobs %s: lease renewal failed: %s", _ids(claimed), exc)

        thread = threading.Thread(target=beat, name="mlq-lease", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def fail_unrunnable(self, *, kind: str, job_ids: list[uuid.UUID], error: PermanentError) -> RunReport:
        log.error("jobs %s: cannot load the %s model: %s", ",".join(map(str, job_ids)), kind, error)
        with self.statements.begin() as session:  # one statement (and a read of file locations)
            claimed = store.claim(session, job_ids=job_ids, kind=kind, worker=self.worker, lease_s=self.lease_s)
            store.finish(
                session,
                outcomes=[
                    store.Outcome(job_id=c.id, attempt=c.attempt, error_code=error.code, error_message=str(error))
                    for c in claimed
                ],
            )
        return RunReport(claimed=len(claimed), failed=len(claimed))

    def process(
        self,
        adapter: Adapter[Any],
        claimed: Sequence[store.Claimed],
        *,
        files: dict[tuple[uuid.UUID, str], str] | None = None,
    ) -> tuple[list[_Done | _Failed], list[tuple[store.Claimed, str]]]:
        """Prepare each job, predict on the good ones. Returns outcomes and jobs to retry."""
        kind = get_kind(adapter.kind)
        outcomes: list[_Done | _Failed] = []
        ready: list[tuple[store.Claimed, Any]] = []
        for job in claimed:
            try:
                item = kind.validate_input(job.input, limits=adapter.spec.limits)
                self._resolve_files(item, job_id=job.id, files=files or {})
                ready.append((job, adapter.prepare(item)))
            except ValidationError as exc:
                outcomes.append(_Failed(job, InvalidInput.code, _validation_message(exc)))
            except PermanentError as exc:
                outcomes.append(_Failed(job, exc.code, str(exc)))
        retry: list[tuple[store.Claimed, str]] = []
        call_cost = self.call_costs.get(adapter.kind, UNKNOWN_CALL_COST_TOKENS)
        for group in budgeted(adapter, ready, call_cost_tokens=call_cost):
            self._predict(adapter, group, outcomes, retry)
        return outcomes, retry

    def _resolve_files(self, item: Schema, *, job_id: uuid.UUID, files: dict[tuple[uuid.UUID, str], str]) -> None:
        """Put the stored bytes of each binary input field into the item."""
        for name in type(item).model_fields:
            value = getattr(item, name)
            if isinstance(value, BinaryInput):
                uri = files.get((job_id, value.artifact or ""))
                if uri is None:
                    raise InvalidInput(f"input.{name}: the uploaded file {value.artifact!r} is missing")
                value.resolve(self.artifacts.open(uri))

    def _predict(
        self,
        adapter: Adapter[Any],
        ready: list[tuple[store.Claimed, Any]],
        outcomes: list[_Done | _Failed],
        retry: list[tuple[store.Claimed, str]],
    ) -> None:
        """Predict; on out-of-memory try the halves, on a model error each item alone,
        so only what cannot run fails; other transient errors send the jobs back."""
        if not ready:
            return
        try:
            predictions = adapter.predict([item for _, item in ready])
            if len(predictions) != len(ready):
                raise ModelError(f"adapter returned {len(predictions)} results for {len(ready)} inputs")
            outcomes.extend(_Done(job, p) for (job, _), p in zip(ready, predictions, strict=True))
            return
        except Exception as raised:
            if _is_sticky_device_error(raised):  # the CUDA context is gone: nothing here can run again
                log.error("jobs %s: device failed for good: %s", ",".join(str(j.id) for j, _ in ready), raised)
                self.give_up(
                    [job for job, _ in ready],
                    code="device_error",
                    message=f"{type(raised).__name__}: {raised}",
                    exit_code=DEVICE_ERROR_EXIT_CODE,
                )
            error = OutOfMemory(str(raised)) if _is_out_of_memory(raised) else raised
        if isinstance(error, TimedOut | Cancelled):  # the whole slice was asked to stop
            outcomes.extend(_Failed(job, error.code, str(error)) for job, _ in ready)
            return
        transient = isinstance(error, RetryableError)
        if len(ready) > 1 and (isinstance(error, OutOfMemory) or not transient):
            half = len(ready) // 2
            parts = [ready[:half], ready[half:]] if isinstance(error, OutOfMemory) else [[p] for p in ready]
            for part in parts:
                self._predict(adapter, part, outcomes, retry)
        elif transient:
            retry.extend((job, f"{error.code}: {error}") for job, _ in ready)  # type: ignore[attr-defined]
        else:
            job = ready[0][0]
            log.error("job %s: model raised %s", job.id, error, exc_info=error)
            code = error.code if isinstance(error, MlqError) else ModelError.code
            outcomes.append(_Failed(job, code, f"{type(error).__name__}: {error}"))


@dataclass
class _Done:
    job: store.Claimed
    prediction: Prediction

    def outcome(self) -> store.Outcome:
        return store.Outcome(job_id=self.job.id, attempt=self.job.attempt, output=self.prediction.output)


@dataclass
class _Failed:
    job: store.Claimed
    code: str
    message: str

    def outcome(self) -> store.Outcome:
        return store.Outcome(
            job_id=self.job.id, attempt=self.job.attempt, error_code=self.code, error_message=self.message
        )


def _is_sticky_device_error(exc: BaseException) -> bool:
    text = str(exc)
    return any(marker in text for marker in STICKY_DEVICE_ERRORS)


def _is_out_of_memory(exc: BaseException) -> bool:
    """torch.OutOfMemoryError (CUDA) or MemoryError, told apart without importing torch here."""
    return isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"


def _release_memory() -> None:
    """Give an unloaded model's memory back (and the GPU cache, when torch uses CUDA)."""
    import gc
    import sys

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _ids(claimed: Sequence[store.Claimed]) -> str:
    return ",".join(str(c.id) for c in claimed)


def _has_files(claimed: Sequence[store.Claimed]) -> bool:
    return any(isinstance(v, dict) and "artifact" in v for c in claimed for v in c.input.values())


def _validation_message(exc: ValidationError) -> str:
    return "; ".join(
        f"input.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" if e["loc"] else e["msg"] for e in exc.errors()
    )


def is_transient_db_error(exc: BaseException) -> bool:
    return isinstance(exc, OperationalError) or (isinstance(exc, DBAPIError) and exc.connection_invalidated)
