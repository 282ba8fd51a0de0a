"""What runs beside a worker process's model calls: one thread, started once, so the model's
thread is only ever stopped between steps (a soft time limit, a cancel) or by replacing the
process (the hard time limit):

- the running claim's leases, renewed every third of a lease, so a slow claim is never taken
  back from a live worker (a dead one stops renewing);
- the running model call's time limits: at the soft limit an interruptible call is asked to
  stop (its jobs fail ``timed_out``, the process goes on); past the hard limit the call's
  ``on_hard_limit`` runs, which records the jobs and exits the process;
- while an interruptible call runs, its jobs' cancel requests, looked for every second:
  when each of them has one, the call is asked to stop.

One thread for the process rather than two for each claim: starting and joining them cost a
bulk run about 8 % of the worker's time (py-spy, the tiny classifier).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from jobs import lifecycle
from jobs.errors import Cancelled, TimedOut
from jobs.modelsfile import ModelSpec
from workers.hooks import Call, Claim, Hook

log = logging.getLogger("mlq.runner")

CANCEL_POLL_S = 1.0  # how often a running generation looks for a cancel request


@dataclass
class _Watched:
    call: Call
    spec: ModelSpec
    on_hard_limit: Callable[[], None]
    started: float
    soft_sent: bool = False
    next_cancel_poll: float = 0.0


def ids_of(jobs: Sequence[lifecycle.Claimed]) -> str:
    return ",".join(str(j.id) for j in jobs)


class Beside:
    """The one thread beside a worker process's model calls (see the module's docstring)."""

    def __init__(self, sessions: sessionmaker[Session], *, lease_s: float) -> None:
        self.sessions = sessions
        self.lease_s = lease_s
        self._changed = threading.Condition()
        self._claimed: Sequence[lifecycle.Claimed] = ()
        self._renew_at = float("inf")
        self._watched: _Watched | None = None
        self._thread: threading.Thread | None = None

    @contextmanager
    def claim(self, claimed: Sequence[lifecycle.Claimed]) -> Iterator[None]:
        """Keep ``claimed``'s leases while the block runs."""
        self._start()
        with self._changed:
            self._claimed, self._renew_at = claimed, time.monotonic() + self.lease_s / 3
            self._changed.notify()
        try:
            yield
        finally:
            with self._changed:
                self._claimed, self._renew_at = (), float("inf")

    @contextmanager
    def call(self, call: Call, *, spec: ModelSpec, on_hard_limit: Callable[[], None]) -> Iterator[None]:
        """Watch ``call``'s time limits (and its cancel requests) while the block runs."""
        self._start()
        now = time.monotonic()
        with self._changed:
            self._watched = _Watched(call, spec, on_hard_limit, started=now, next_cancel_poll=now + CANCEL_POLL_S)
            self._changed.notify()
        try:
            yield
        finally:
            with self._changed:
                self._watched = None

    def _start(self) -> None:
        if self._thread is None:  # started in the pool process, after the fork
            self._thread = threading.Thread(target=self._loop, name="mlq-beside", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._changed:
                now = time.monotonic()
                watched, claimed = self._watched, self._claimed
                due = [self._renew_at]
                if watched is not None:
                    due += self._call_deadlines(watched)
                wake_at = min(due)
                if wake_at > now:
                    self._changed.wait(timeout=None if wake_at == float("inf") else wake_at - now)
                    continue
                renew = now >= self._renew_at
                if renew:
                    self._renew_at = now + self.lease_s / 3
            if watched is not None:
                self._act_on(watched, now)
            polled = watched if watched is not None and watched.call.interruptible else None
            poll = polled is not None and not polled.call.stop.is_set() and now >= polled.next_cancel_poll
            if renew or poll:
                self._touch_store(claimed, polled if poll else None, renew=renew)

    @staticmethod
    def _call_deadlines(watched: _Watched) -> list[float]:
        spec, started = watched.spec, watched.started
        if watched.call.interruptible and not watched.soft_sent:
            return [started + spec.soft_limit_s, watched.next_cancel_poll]
        if watched.call.interruptible and not watched.call.stop.is_set():
            return [started + spec.time_limit_s, watched.next_cancel_poll]
        return [started + spec.time_limit_s]

    def _act_on(self, watched: _Watched, now: float) -> None:
        call, spec = watched.call, watched.spec
        if call.interruptible and not watched.soft_sent and now >= watched.started + spec.soft_limit_s:
            watched.soft_sent = True
            log.warning("jobs %s: past the soft time limit of %.0fs; stopping", ids_of(call.jobs), spec.soft_limit_s)
            call.stop.request(TimedOut(f"stopped at the soft time limit of {spec.soft_limit_s:g}s for this kind"))
        elif now >= watched.started + spec.time_limit_s:
            log.error("jobs %s: over the time limit of %.0fs", ids_of(call.jobs), spec.time_limit_s)
            watched.on_hard_limit()  # records the jobs and exits the process

    def _touch_store(self, claimed: Sequence[lifecycle.Claimed], watched: _Watched | None, *, renew: bool) -> None:
        """Renew the leases (``renew``), and look for the cancel requests of ``watched``'s jobs."""
        if watched is not None:
            watched.next_cancel_poll = time.monotonic() + CANCEL_POLL_S
        try:
            with self.sessions.begin() as session:
                if watched is not None and not watched.call.stop.is_set():
                    mine = [j.id for j in watched.call.jobs]
                    if len(lifecycle.cancel_requested(session, job_ids=mine)) == len(mine):
                        log.info("jobs %s: cancelled while running; stopping", ids_of(watched.call.jobs))
                        watched.call.stop.request(Cancelled("cancelled while it ran; stopped between steps"))
                if renew and claimed:
                    ids, attempts = [c.id for c in claimed], [c.attempt for c in claimed]
                    lifecycle.extend_leases(session, job_ids=ids, attempts=attempts, lease_s=self.lease_s)
        except Exception as exc:  # the next round tries again; the lease has slack
            log.warning("jobs %s: lease renewal failed: %s", ids_of(claimed), exc)


class KeepLeases(Hook):
    """The runner's hook that keeps a claim's leases while it runs (``Beside.claim``)."""

    def __init__(self, beside: Beside) -> None:
        self.beside = beside

    def around(self, claim: Claim) -> AbstractContextManager[None]:
        return self.beside.claim(claim.jobs)


class WatchCalls(Hook):
    """The runner's hook that watches each model call's time limits and cancel requests
    (``Beside.call``); past the hard limit, ``on_hard_limit(claim, call)`` records the call's
    jobs and exits the process."""

    def __init__(self, beside: Beside, *, on_hard_limit: Callable[[Claim, Call], None]) -> None:
        self.beside = beside
        self.on_hard_limit = on_hard_limit

    def around_call(self, claim: Claim, call: Call) -> AbstractContextManager[None]:
        return self.beside.call(call, spec=claim.spec, on_hard_limit=lambda: self.on_hard_limit(claim, call))
