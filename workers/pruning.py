"""Retention on a schedule: the active reconciler prunes every ``prune_every_s`` on a thread of
its own, so a long prune (millions of rows after retention is first turned on) never delays a
round of lease and wake-up repairs. One prune at a time; a failed one is retried next time."""

from __future__ import annotations

import logging
import threading
import time

from jobs import metrics
from jobs.retention import Pruner

log = logging.getLogger("mlq.reconciler")


class PruneSchedule:
    def __init__(self, pruner: Pruner, *, every_s: float) -> None:
        self.pruner = pruner
        self.every_s = every_s  # 0: never (`mlq prune` only)
        self.next_at = 0.0  # monotonic; the first tick of an active reconciler prunes
        self.thread: threading.Thread | None = None

    def tick(self) -> None:
        """Start a prune when one is due and none runs; returns at once."""
        if self.every_s <= 0 or (self.thread is not None and self.thread.is_alive()):
            return
        if time.monotonic() < self.next_at:
            return
        self.next_at = time.monotonic() + self.every_s
        self.thread = threading.Thread(target=self.run, name="mlq-prune", daemon=True)
        self.thread.start()

    def run(self) -> None:
        try:
            done = self.pruner.prune()
        except Exception as exc:  # PostgreSQL away: the next tick after every_s tries again
            log.warning("prune failed (%s); next one in %.0fs", exc, self.every_s)
            return
        for what in ("jobs", "artifacts", "webhook_deliveries", "batches", "files"):
            metrics.PRUNED.labels(what).inc(getattr(done, what))
        metrics.LAST_PRUNE.set(time.time())
        if done.jobs or done.batches or done.files:
            log.info(
                "pruned %d jobs, %d bulk runs, %d files in %d transactions, %.1fs",
                done.jobs, done.batches, done.files, done.transactions, done.seconds,
            )  # fmt: skip
