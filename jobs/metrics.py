"""Prometheus metrics of mlq: one definition for every process.

Processes that fork (uvicorn workers, Celery pool processes) write their values to
``PROMETHEUS_MULTIPROC_DIR``, which the serving process reads whole
(``registry()``); a process without that variable keeps its values in memory. The
variable must be set before this module is first imported: ``mlq api`` and
``mlq worker`` do it (``jobs.metricsdir.use_multiprocess_dir``) before they import the app.

Names and labels (the Grafana dashboard in infra/grafana reads exactly these):

- ``mlq_jobs_submitted_total{kind,tenant}``: accepted jobs (bulk-run items included)
- ``mlq_jobs_finished_total{kind,tenant,status,error_code}``: results written by workers
- ``mlq_job_queue_wait_seconds{kind,model}``: created → claimed, per job
- ``mlq_job_run_seconds{kind,model}``: claimed → result written, per job
- ``mlq_batch_size{kind}``: jobs per model call (micro-batching)
- ``mlq_model_load_seconds{kind,model}``: the last load in a worker process
- ``mlq_worker_memory_bytes{pid}``, ``mlq_gpu_memory_bytes{gpu,pid}``, ``mlq_gpu_utilization_ratio{gpu,pid}``
- ``mlq_reconciler_actions_total{action}``, ``mlq_webhook_deliveries_total{outcome}``
- reconciler: ``mlq_pruned_total{what}`` (jobs, artifacts, webhook_deliveries, batches, files),
  ``mlq_last_prune_timestamp_seconds``
- served by the API only, read at scrape time: ``mlq_queue_depth{kind,priority}`` (Redis),
  ``mlq_jobs{kind,status}`` (PostgreSQL: queued and running), ``mlq_workers_online`` (Celery ping)
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, multiprocess

from jobs.metricsdir import MULTIPROC_ENV

SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)

JOBS_SUBMITTED = Counter("mlq_jobs_submitted", "Jobs accepted by the API.", ["kind", "tenant"])
JOBS_FINISHED = Counter(
    "mlq_jobs_finished", "Jobs whose result a worker wrote.", ["kind", "tenant", "status", "error_code"]
)
QUEUE_WAIT = Histogram(
    "mlq_job_queue_wait_seconds", "Seconds from submission to claim.", ["kind", "model"], buckets=SECONDS
)
RUN_TIME = Histogram("mlq_job_run_seconds", "Seconds from claim to stored result.", ["kind", "model"], buckets=SECONDS)
BATCH_SIZE = Histogram(
    "mlq_batch_size", "Jobs per model call.", ["kind"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
)
MODEL_LOAD = Gauge(
    "mlq_model_load_seconds", "Seconds the last model load took.", ["kind", "model"], multiprocess_mode="max"
)
WORKER_MEMORY = Gauge("mlq_worker_memory_bytes", "Resident memory of a worker process.", multiprocess_mode="liveall")
GPU_MEMORY = Gauge("mlq_gpu_memory_bytes", "GPU memory held by a worker process.", ["gpu"], multiprocess_mode="liveall")
GPU_UTILIZATION = Gauge(
    "mlq_gpu_utilization_ratio", "GPU busy fraction seen by a worker process.", ["gpu"], multiprocess_mode="liveall"
)
RECONCILER_ACTIONS = Counter("mlq_reconciler_actions", "What the reconciler put right.", ["action"])
PRUNED = Counter("mlq_pruned", "Rows retention removed (jobs/retention.py).", ["what"])
LAST_PRUNE = Gauge(
    "mlq_last_prune_timestamp_seconds", "When the last prune ended without error (Unix s).", multiprocess_mode="max"
)
WEBHOOK_DELIVERIES = Counter("mlq_webhook_deliveries", "Webhook delivery attempts by outcome.", ["outcome"])


def registry() -> CollectorRegistry:
    """What /metrics serves: every process's values when they share a folder, else this one's."""
    if os.environ.get(MULTIPROC_ENV):
        combined = CollectorRegistry()
        multiprocess.MultiProcessCollector(combined)
        return combined
    return REGISTRY


def process_exited(pid: int) -> None:
    """Drop a finished process's live gauges (memory, GPU) from the shared folder."""
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)


def record_process_memory() -> None:
    """This process's resident memory and, when CUDA is in use, its GPU memory and load."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        WORKER_MEMORY.set(pages * os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, IndexError):
        pass
    torch = sys.modules.get("torch")  # never import torch here: only report what a model already uses
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return
    for index in range(torch.cuda.device_count()):
        GPU_MEMORY.labels(str(index)).set(torch.cuda.memory_reserved(index))
        with contextlib.suppress(Exception):  # needs NVML (pynvml); memory is still reported
            GPU_UTILIZATION.labels(str(index)).set(torch.cuda.utilization(index) / 100)
