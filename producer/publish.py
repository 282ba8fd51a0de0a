"""Publishing wake-up messages to the kinds' queues, after the job rows are committed."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Sequence

from celery import Celery

from jobs.broker import celery_config
from jobs.queues import send_wakeup
from jobs.settings import Settings

log = logging.getLogger("mlq.publish")


class Publisher:
    def __init__(self, settings: Settings) -> None:
        self.app = Celery("mlq-producer")
        self.app.conf.update(celery_config(settings))

    def publish(self, *, kind: str, job_ids: Sequence[uuid.UUID], priority: int) -> bool:
        """Send one message naming ``job_ids``. False when the broker is unreachable:
        the jobs stay ``queued`` in PostgreSQL and the reconciler publishes them later."""
        try:
            send_wakeup(self.app, kind=kind, job_ids=job_ids, priority=priority)
        except Exception as exc:  # the row is committed: a lost wake-up must not fail the request
            log.warning(
                "jobs %s: publish failed (%s); they stay queued for the reconciler", ",".join(map(str, job_ids)), exc
            )
            return False
        return True

    def publish_chunks(self, *, kind: str, chunks: Iterable[Sequence[uuid.UUID]], priority: int) -> int:
        """One message per chunk over one connection. Returns how many were published;
        the rest stay ``queued`` for the reconciler."""
        sent = 0
        try:
            with self.app.producer_or_acquire() as producer:
                for chunk in chunks:
                    send_wakeup(self.app, kind=kind, job_ids=chunk, priority=priority, producer=producer)
                    sent += 1
        except Exception as exc:
            log.warning("publish of %s chunks failed after %d (%s); the rest stay queued", kind, sent, exc)
        return sent

    def ping(self) -> None:
        with self.app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
            conn.default_channel.client.ping()

    def close(self) -> None:
        self.app.close()
