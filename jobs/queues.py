"""Names on the broker, shared by the producer (which publishes) and the workers.

A message is only a wake-up: its task's one argument is a list of job ids. The
input stays in PostgreSQL, so a redelivered or replayed message can do no harm.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

QUEUE_PREFIX = "mlq"


def queue_name(kind: str) -> str:
    """One queue per kind: workers subscribe to the kinds they serve."""
    return f"{QUEUE_PREFIX}.{kind}"


def task_name(kind: str) -> str:
    """One task name per kind, so Flower and logs show the kind."""
    return f"mlq.run.{kind}"


DEFAULT_PRIORITY = 5  # 0 (lowest) .. 9 (highest); single jobs default here, bulk runs go lower
BATCH_PRIORITY = 2  # bulk runs: interactive jobs of the same kind overtake them
MAX_BATCH_PRIORITY = 4  # a bulk run never outranks a single job of default priority
MIN_PRIORITY = 0
MAX_PRIORITY = 9


def broker_priority(priority: int) -> int:
    """Our priority (9 most urgent, as users expect) to kombu's Redis priority (0 most urgent)."""
    return MAX_PRIORITY - max(MIN_PRIORITY, min(MAX_PRIORITY, priority))


def send_wakeup(
    app: Any, *, kind: str, job_ids: Sequence[uuid.UUID | str], priority: int, producer: Any = None
) -> None:
    """Publish one wake-up message naming ``job_ids`` on ``kind``'s queue (``app``: a Celery
    app; ``producer``: a kombu producer to reuse over many messages). The one place a
    message is built, for the API and the reconciler alike."""
    app.send_task(
        task_name(kind),
        args=[[str(i) for i in job_ids]],
        queue=queue_name(kind),
        priority=broker_priority(priority),
        producer=producer,
    )
