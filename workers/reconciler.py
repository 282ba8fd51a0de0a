"""The reconciler: PostgreSQL is the record, so anything the broker or a worker lost is
found there and put right.

Each round: running jobs whose lease expired go back to ``queued`` (or fail with
``max_attempts_exceeded``) and are published again; queued jobs of a kind whose broker
queue is empty and that have waited ``requeue_after_s`` are published again (a crash
between commit and publish, a Redis that lost its data). One reconciler works at a
time: it holds a PostgreSQL advisory lock; others wait as standbys. The active one also prunes
what retention has passed, every ``prune_every_s`` (workers/pruning.py).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from celery import Celery
from sqlalchemy import Connection, Engine, text
from sqlalchemy.orm import Session, sessionmaker

from jobs import lifecycle, metrics, reconcile
from jobs.modelsfile import ModelsConfig
from jobs.queues import queue_name, send_wakeup
from workers.pruning import PruneSchedule

log = logging.getLogger("mlq.reconciler")

LOCK_ID = 7_311_002  # pg advisory lock held by the one active reconciler
# The lock's session asks PostgreSQL to probe its client and drop it, and the lock with it, when
# the client's host stops answering: a host cut off sends nothing, so without probes the session
# would hold the lock for the kernel's default two hours of keepalive and no standby could take
# over. Idle 5 s, then 5 probes 1 s apart: dropped about 10 s after its last word
# (tests/faults/test_hosts.py, the active reconciler's host cut off).
LOCK_KEEPALIVE = {"tcp_keepalives_idle": "5", "tcp_keepalives_interval": "1", "tcp_keepalives_count": "5",
                  "tcp_user_timeout": "10000"}  # fmt: skip
ROUND_LIMIT = 10_000  # jobs handled per round and per action
CHUNK = 256  # job ids per republished message


def warn_if_autovacuum_is_off(conn: Connection) -> bool:
    """Whether the server's autovacuum is on; a warning when not. ``jobs`` is a queue: without
    VACUUM its claim index fills with dead entries and claims slow down (migration 0012)."""
    on = conn.execute(text("SHOW autovacuum")).scalar() == "on"
    if not on:
        log.warning(
            "PostgreSQL's autovacuum is off: dead rows pile up under the queue and claims slow down; "
            "turn it on, or VACUUM jobs and webhook_deliveries on a schedule"
        )
    return on


@dataclass
class Round:
    requeued: int = 0  # expired leases given back
    retried: int = 0  # jobs given back after a transient error, their backoff over
    dead: int = 0  # expired leases out of attempts: failed
    republished: int = 0  # queued jobs whose wake-up was lost
    broker_down: bool = False


class Reconciler:
    def __init__(
        self,
        *,
        engine: Engine,
        app: Celery,
        models: ModelsConfig,
        requeue_after_s: float,
        prune: PruneSchedule | None = None,  # retention (jobs/retention.py), while this one is active
        lease_grace_s: float = 0.0,
    ) -> None:
        # Once active (at start, or back after losing PostgreSQL), leases are taken back only after
        # ``lease_grace_s`` (a lease): one that ran out while PostgreSQL was away (a restart, a
        # failover) says nothing of its worker, which renews it, every third of a lease, as soon
        # as PostgreSQL answers, and then writes the results it kept.
        self.lease_grace_s = lease_grace_s
        self._leases_from = 0.0  # time.monotonic() from which expired leases are taken back
        self.engine = engine
        self.prune = prune
        self.sessions: sessionmaker[Session] = sessionmaker(engine)
        self.app = app
        self.models = models
        self.requeue_after_s = requeue_after_s

    def became_active(self) -> None:
        """This one holds the lock now: expired leases are taken back after ``lease_grace_s``."""
        log.info("this reconciler is active")
        self._leases_from = time.monotonic() + self.lease_grace_s

    def run_once(self) -> Round:
        done = Round()
        with self.sessions.begin() as session:
            taken = (
                lifecycle.expired_leases(session, limit=ROUND_LIMIT)
                if time.monotonic() >= self._leases_from
                else lifecycle.GivenBack(requeued=[], dead=[])
            )
            due = reconcile.due_retries(session, limit=ROUND_LIMIT)
        done.dead = len(taken.dead)
        try:
            done.requeued = self.publish(taken.requeued)
            done.retried = self.publish(due)
            idle = [kind for kind in self.models.kinds if self.queue_size(kind) == 0]
        except Exception as exc:  # Redis away: the jobs stay queued; next round tries again
            log.warning("broker unavailable (%s); will publish next round", exc)
            done.broker_down = True
            return done
        with self.sessions.begin() as session:
            stale = reconcile.stale_queued(session, kinds=idle, older_than_s=self.requeue_after_s, limit=ROUND_LIMIT)
        done.republished = self.publish(stale)
        for action, n in (("lease_taken_back", done.requeued), ("dead_lettered", done.dead),
                          ("retry_published", done.retried), ("republished", done.republished)):  # fmt: skip
            if n:
                metrics.RECONCILER_ACTIONS.labels(action).inc(n)
        if done.requeued or done.dead or done.republished or done.retried:
            log.info(
                "reconciled: %d leases taken back, %d dead-lettered, %d retries due, %d queued jobs republished",
                done.requeued, done.dead, done.retried, done.republished,
            )  # fmt: skip
        return done

    def queue_size(self, kind: str) -> int:
        with self.app.connection_for_read() as conn:
            return int(conn.default_channel._size(queue_name(kind)))

    def publish(self, jobs: Sequence[lifecycle.Waiting]) -> int:
        """Fresh jobs in chunks; a job that lost an attempt alone (it may be what killed a worker)."""
        groups: dict[tuple[str, int, bool], list[uuid.UUID]] = defaultdict(list)
        for job in jobs:
            groups[(job.kind, job.priority, job.retried)].append(job.id)
        with self.app.producer_or_acquire() as producer:
            for (kind, priority, retried), ids in groups.items():
                chunk = 1 if retried else CHUNK
                for start in range(0, len(ids), chunk):
                    send_wakeup(self.app, kind=kind, job_ids=ids[start : start + chunk], priority=priority,
                                producer=producer)  # fmt: skip
        return len(jobs)

    def run_forever(self, *, every_s: float) -> None:
        """Rounds every ``every_s`` while holding the advisory lock; standby without it."""
        while True:
            try:
                with self.engine.connect() as lock:
                    for name, value in LOCK_KEEPALIVE.items():
                        lock.execute(text("SELECT set_config(:name, :value, false)"), {"name": name, "value": value})
                    if not lock.execute(text("SELECT pg_try_advisory_lock(:id)"), {"id": LOCK_ID}).scalar():
                        time.sleep(every_s)
                        continue
                    warn_if_autovacuum_is_off(lock)
                    lock.commit()
                    self.became_active()
                    while True:
                        self.run_once()
                        if self.prune is not None:
                            self.prune.tick()
                        time.sleep(every_s)
                        lock.execute(text("SELECT 1"))  # notice a lost connection, and with it the lock
                        lock.commit()  # not "idle in transaction" (idle_in_transaction_session_timeout)
            except Exception as exc:  # a PostgreSQL restart: reconnect, take the lock again
                log.warning("reconciler lost PostgreSQL (%s); retrying", exc)
                time.sleep(every_s)
