"""The baseline a first design would build: one plain Celery task per item.

No database, no result backend, no job ids: the message carries the text, the
task embeds it with the same adapter mlq uses and pushes its finish time
(``time.time()``) to a Redis list, which is all the benchmark reads. Started by
``bench.throughput`` as ``celery -A bench.naive_celery worker``.

``noop`` is the floor of any Celery design: ``noop.delay().get()`` with Redis as
broker and result backend, timed by ``bench.latency`` beside mlq's jobs.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import redis
from celery import Celery
from celery.signals import worker_process_init

from jobs.kinds import EmbeddingInput
from jobs.modelsfile import load_models_file
from models.base import Adapter
from models.registry import create_adapter

BROKER_ENV = "BENCH_NAIVE_REDIS_URL"  # its own Redis database, set by the benchmark
THREADS_ENV = "BENCH_NAIVE_THREADS"  # torch threads per pool process: cores / concurrency, as `mlq worker` does
QUEUE = "bench.naive"
DONE_KEY = "bench:naive:done"  # one finish timestamp per task

app = Celery(
    "bench-naive",
    broker=os.environ.get(BROKER_ENV, "redis://127.0.0.1:6379/0"),
    backend=os.environ.get(BROKER_ENV, "redis://127.0.0.1:6379/0"),  # only ``noop`` stores a result
)
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_default_queue=QUEUE,
    broker_connection_retry_on_startup=True,
)

_adapter: Adapter[Any, Any] | None = None
_redis: redis.Redis | None = None


@worker_process_init.connect
def _load_model(**_: Any) -> None:
    """Once per pool process, after the fork: the model and a Redis connection."""
    global _adapter, _redis
    import torch

    torch.set_num_threads(int(os.environ.get(THREADS_ENV) or 1))
    spec = load_models_file("demo").kinds["embedding"]
    _adapter = create_adapter(spec, data_dir=Path(os.environ.get("MLQ_DATA_DIR", ".mlq")))
    _adapter.load("cpu")
    _redis = redis.Redis.from_url(app.conf.broker_url)


@app.task(name="bench.naive.embed")
def embed(text: str) -> None:
    assert _adapter is not None and _redis is not None, "the pool process did not load the model"
    _adapter.predict([_adapter.prepare(EmbeddingInput(text=text))])
    _redis.rpush(DONE_KEY, time.time())


@app.task(name="bench.naive.noop", ignore_result=False)
def noop() -> int:
    """Nothing: its result, through Celery's Redis result backend, is the bare round trip."""
    return 1
