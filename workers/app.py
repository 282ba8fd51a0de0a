"""The workers' Celery app: one thin task per kind, a runner per pool process.

Imported by the forking parent, so nothing here touches torch or CUDA; the
runner and its models are created in each pool process after the fork
(``worker_process_init``).
"""

from __future__ import annotations

import gc
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from celery import Celery, Task
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    worker_process_init,
    worker_process_shutdown,
)

from jobs import logs, metrics
from jobs.artifacts import LocalArtifactStore
from jobs.backoff import backoff_s
from jobs.broker import celery_config
from jobs.db import make_engine, make_sessionmaker
from jobs.kinds import KINDS
from jobs.modelsfile import load_models_file
from jobs.queues import queue_name, task_name
from jobs.settings import Settings, get_settings
from workers.outcomes import is_transient_db_error
from workers.redis_acks import free_slots_on_failed_acks
from workers.runner import Runner

log = logging.getLogger("mlq.worker")

RETRY_BASE_S = 0.5  # first retry after a database blip; doubles each time, with jitter
RETRY_MAX_S = 30.0
MODEL_LOAD_TIMEOUT_S = 900.0  # the longest a pool process may take to load its models

_runner: Runner | None = None
_making_runner = threading.Lock()  # the preload thread and the first task may both ask for it


@dataclass
class _Started:
    """What ``mlq worker`` started this worker with, set before the pool forks (its processes
    inherit it). Unset (a test importing the app): the settings of the environment, every kind."""

    settings: Settings | None = None
    kinds: frozenset[str] = frozenset()


_started = _Started()


def configure(settings: Settings, *, kinds: Sequence[str]) -> None:
    """Give this worker its settings and the kinds it serves (and preloads)."""
    _started.settings, _started.kinds = settings, frozenset(kinds)


def settings() -> Settings:
    return _started.settings or get_settings()


def create_app() -> Celery:
    app = Celery("mlq")
    app.conf.update(celery_config(settings()))
    app.conf.task_routes = {task_name(kind): {"queue": queue_name(kind)} for kind in KINDS}
    # A pool process loads its models before it reports up; Celery's default 4 s wait would
    # kill it in a loop while a large model loads.
    app.conf.worker_proc_alive_timeout = MODEL_LOAD_TIMEOUT_S
    for kind in KINDS:
        _register(app, kind)
    return app


def _register(app: Celery, kind: str) -> None:
    @app.task(name=task_name(kind), bind=True, max_retries=None)
    def run_jobs(self: Task, job_ids: list[str]) -> dict[str, int]:
        if kind not in served_kinds():
            # A message on the wrong queue (sent by hand, or a routing mistake): this worker has
            # no model for the kind and loads none. Its jobs stay queued for their own workers;
            # the reconciler publishes them again to their kind's queue.
            log.warning("jobs %s: a %s message reached a worker serving %s; left queued", job_ids, kind, served_kinds())
            return {"claimed": 0, "succeeded": 0, "failed": 0}
        try:
            report = runner().run(kind=kind, job_ids=job_ids)
        except Exception as exc:
            if not is_transient_db_error(exc):
                raise
            delay_s = backoff_s(self.request.retries, base_s=RETRY_BASE_S, max_s=RETRY_MAX_S)
            log.warning("jobs %s: database unavailable (%s); retrying in %.1fs", job_ids, exc, delay_s)
            raise self.retry(countdown=delay_s) from exc
        return {"claimed": report.claimed, "succeeded": report.succeeded, "failed": report.failed}


def served_kinds() -> frozenset[str]:
    """The kinds this worker was started for (``mlq worker --kinds``); every kind when not set."""
    return _started.kinds or frozenset(KINDS)


def runner() -> Runner:
    global _runner
    with _making_runner:
        if _runner is None:
            _runner = _new_runner()
    return _runner


def _new_runner() -> Runner:
    given = settings()
    return Runner(
        sessions=make_sessionmaker(make_engine(given.require_database_url(), pool_size=2)),
        models=load_models_file(given.models),
        artifacts=LocalArtifactStore(given.artifacts_path),
        data_dir=given.data_dir,
        worker=f"{given.worker_name or 'worker'}/{os.getpid()}",
        lease_s=given.lease_s,
        memory_budget_bytes=given.worker_memory_budget_mb * 2**20,
        allow_unpinned=given.allow_unpinned_models or given.standalone,
    )


@worker_process_init.connect
def _load_models(**_: Any) -> None:
    """In each pool process, after the fork: set threads, and load this worker's models on a
    thread of their own while the process already takes jobs (a media worker's four models
    took 34 s; its first job waited for all four). A job whose model is still loading waits
    for that one alone (``Runner.adapter`` loads each kind once, under its own lock)."""
    from workers.placement import configure_torch_threads

    configure_torch_threads()
    kinds = sorted(_started.kinds)
    threading.Thread(target=_preload, args=(kinds,), name="mlq-preload", daemon=True).start()


def _preload(kinds: list[str]) -> None:
    for kind in kinds:
        log.info("loading the %s model", kind)
        try:
            runner().adapter(kind)
        except Exception:  # the worker still serves its other kinds; this kind's jobs fail with the reason
            log.exception("could not load the model for %s", kind)
    # What is loaded now lives as long as the process: keep it out of the collector's
    # generations. A full collection walked about 430,000 objects (torch, transformers, the
    # model) and took about 200 ms with only the tiny classifier loaded, in the middle of a job.
    gc.collect()
    gc.freeze()


@after_setup_logger.connect
@after_setup_task_logger.connect
def _log_format(logger: logging.Logger, **_: Any) -> None:
    """Celery sets up its own handlers; give them mlq's format (JSON lines with MLQ_LOG_FORMAT=json)."""
    if settings().log_format == "json":
        for handler in logger.handlers:
            handler.setFormatter(logs.JsonFormatter())


@worker_process_shutdown.connect
def _close(**_: Any) -> None:
    metrics.process_exited(os.getpid())
    if _runner is not None:
        _runner.sessions.kw["bind"].dispose()


free_slots_on_failed_acks()
app = create_app()
