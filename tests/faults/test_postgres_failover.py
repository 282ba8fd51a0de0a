"""PostgreSQL fails over: the primary is killed (kill -9 of all its processes, as a crashed
host) while jobs are submitted and run, and its synchronous standby is promoted (pg_ctl
promote). The API, the worker and the reconciler reach PostgreSQL through one
``MLQ_DATABASE_URL`` naming both servers with ``target_session_attrs=read-write``, so each
finds the new primary by itself; nothing is restarted or reconfigured.

Two clients submit single jobs continuously, each with an Idempotency-Key, and send a refused
one again with the same key (a commit whose answer was lost with the primary is then answered
with its id); the worker is held between predict and store (``Hold``) at the crash. Asserted:
every job that got a 202 is on the new primary and ends exactly once; between the crash and
the promotion the API answers 503 with Retry-After, nothing else, never a 202; the held
claim's results are written after the promotion, at the worker's next try, by the worker that
computed them in the same attempt (no job ran twice). `pytest tests/faults -s` prints the
figures: the seconds of 503, and the tries of the held write."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime

import httpx
import pytest

from jobs.settings import Settings
from tests.faults.conftest import FaultStack, record
from tests.faults.replicas import Pair, replicated_stack
from tests.services import Services
from workers.results import STORE_RETRY_MAX_S

KIND = "moderation"  # the demo profile's: all-MiniLM-L6-v2, small and quick on a CPU
WORKER = ["worker", "--kinds", KIND]
CLIENTS = 2  # threads submitting without pause
GAP_S = 3.0  # crash to promotion: a failover manager notices and promotes (seconds to a minute)
PAUSE_S = 0.1  # between a client's jobs: less than the worker keeps up with on 2 busy cores
RETRY_EVERY_S = 0.1  # a refused submission is sent again this soon (fine-grained gap; Retry-After says 5)
BEFORE_CRASH = 10  # jobs finished before the crash: it hits a running system
AFTER_PROMOTION = 20  # jobs accepted after the promotion before the clients stop
DEADLINE_S = 60.0  # for each of the steps above
SLACK_S = 5.0  # a busy machine's delays, on top of a wait the code bounds
MODEL_LOAD_S = 240.0  # the first job waits for the model: 34 s once, with other tests running


@dataclass
class Answer:
    sent_at: float
    at: float
    status: int
    retry_after: str | None
    job_id: str | None


@dataclass
class Clients:
    """Threads submitting single jobs, each until its 202 (same Idempotency-Key each time)."""

    stack: FaultStack
    answers: list[Answer] = field(default_factory=list)
    sending: dict[int, float] = field(default_factory=dict)  # thread -> when its request went out
    stopping: threading.Event = field(default_factory=threading.Event)
    errors: list[BaseException] = field(default_factory=list)

    @property
    def accepted(self) -> list[str]:
        return [a.job_id for a in list(self.answers) if a.status == 202 and a.job_id]

    def run(self, index: int) -> None:
        try:
            with self.stack.http() as http:
                n = 0
                while not self.stopping.is_set():
                    self.submit(http, index, f"failover client {index} job {n}: a harmless sentence")
                    n += 1
                    time.sleep(PAUSE_S)
        except BaseException as exc:  # the test fails with it
            self.errors.append(exc)

    def submit(self, http: httpx.Client, index: int, text: str) -> None:
        key = uuid.uuid4().hex
        while True:
            self.sending[index] = sent_at = time.monotonic()
            got = http.post("/v1/jobs", json={"kind": KIND, "input": {"text": text}}, headers={"Idempotency-Key": key})
            del self.sending[index]
            job_id = str(got.json()["id"]) if got.status_code == 202 else None
            self.answers.append(
                Answer(sent_at, time.monotonic(), got.status_code, got.headers.get("Retry-After"), job_id)
            )
            if got.status_code == 202:
                return
            time.sleep(RETRY_EVERY_S)

    @contextmanager
    def running(self) -> Iterator[None]:
        threads = [threading.Thread(target=self.run, args=(i,), name=f"client-{i}") for i in range(CLIENTS)]
        for thread in threads:
            thread.start()
        try:
            yield
        finally:
            self.stopping.set()
            for thread in threads:
                thread.join(timeout=60)
        assert not self.errors, self.errors


@pytest.fixture
def replicated(services: Services, settings: Settings) -> Iterator[tuple[FaultStack, Pair]]:
    with replicated_stack(settings, redis_base_url=services.redis_base_url) as both:
        yield both


def until(what: str, done: Callable[[], bool], timeout_s: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, f"not {what} after {timeout_s}s"
        time.sleep(0.05)


def test_primary_killed_and_standby_promoted_under_load(replicated: tuple[FaultStack, Pair]) -> None:
    stack, pair = replicated
    hold = stack.hold("failover")
    hold.off()  # the worker runs freely until the claim the crash should catch
    worker = stack.start("worker", WORKER, **hold.env)
    with stack.http() as http:  # the worker's model loaded before the clients start
        warm_up = http.post("/v1/jobs", json={"kind": KIND, "input": {"text": "warm up"}}).json()["id"]
    until("the model loaded", lambda: stack.count("succeeded") == 1, timeout_s=MODEL_LOAD_S)
    clients = Clients(stack)
    with clients.running():
        until(f"{BEFORE_CRASH} jobs succeeded", lambda: stack.count("succeeded") >= BEFORE_CRASH)
        hold.on()
        held = hold.held(worker)
        at_crash = stack.jobs(held)
        assert {(s, a) for s, a, _, _ in at_crash.values()} == {("running", 1)}, at_crash
        [(queued, succeeded, backends)] = stack.sql(
            """SELECT count(*) FILTER (WHERE status = 'queued'), count(*) FILTER (WHERE status = 'succeeded'),
                      (SELECT count(*) FROM pg_stat_activity WHERE datname = current_database())
               FROM jobs"""
        )
        accepted_before = clients.accepted
        killed = pair.kill_primary()
        crashed_at = time.monotonic()
        in_flight = sum(1 for sent in list(clients.sending.values()) if sent < crashed_at)
        hold.off()  # the held results go to a primary that is gone
        time.sleep(GAP_S)
        promoting_at, promoting_wall = time.monotonic(), datetime.now().astimezone()
        pair.promote()
        promoted_at = time.monotonic()
        until(
            f"{AFTER_PROMOTION} jobs accepted after the promotion",
            lambda: (
                sum(1 for a in list(clients.answers) if a.status == 202 and a.sent_at > promoted_at) >= AFTER_PROMOTION
            ),
        )
    figures = stack.settle(
        [warm_up, *clients.accepted], fault_at=crashed_at, name="PostgreSQL primary killed, standby promoted",
        running_at_crash=len(at_crash), queued_at_crash=queued, succeeded_at_crash=succeeded,
        submissions_in_flight=in_flight, pg_processes_killed=killed, db_sessions_at_crash=backends,
        accepted_before_crash=len(accepted_before),
    )  # fmt: skip

    # every 202 given before the crash is on the new primary, and ran once
    before = stack.jobs(accepted_before)
    assert len(before) == len(accepted_before) and all(s == "succeeded" for s, _, _, _ in before.values())

    # the held claim: stored after the promotion by the worker that computed it, in its attempt
    for job_id, (status, attempt, history, by) in stack.jobs(held).items():
        assert (status, attempt, history, by) == ("succeeded", 1, [], at_crash[job_id][3]), job_id
    [(stored_at,)] = stack.sql(
        "SELECT max(written_at) FROM status_writes WHERE job_id = ANY(CAST(%s AS uuid[])) AND new_status = 'succeeded'",
        held,
    )
    failed_writes = sum(
        1 for line in worker.log_path.read_text(errors="replace").splitlines()
        if "result write failed" in line and held[0] in line
    )  # fmt: skip
    assert failed_writes >= 1, "the held claim's results never met the crashed primary"
    assert figures["retried"] == 0, "a job ran twice"

    # the API: 503 with Retry-After while no primary answered, never anything else, and no 202
    refused = [a for a in clients.answers if a.status != 202]
    assert refused and all(a.status == 503 and a.retry_after for a in refused), refused
    first_202_after = min(a.at for a in clients.answers if a.status == 202 and a.sent_at > crashed_at)
    assert first_202_after > promoting_at, "a 202 while there was no primary"
    stored_after_s = (stored_at - promoting_wall).total_seconds()
    assert 0 < stored_after_s < STORE_RETRY_MAX_S + SLACK_S  # at the worker's next try once PostgreSQL is back
    record({
        "fault": "failover figures", "answers_503": len(refused),
        "first_503_to_last_503_s": round(max(a.at for a in refused) - min(a.at for a in refused), 2),
        "crash_to_first_202_s": round(first_202_after - crashed_at, 2),
        "promote_s": round(promoted_at - promoting_at, 2),
        "promotion_to_first_202_s": round(first_202_after - promoting_at, 2),
        "held_results_tries": failed_writes + 1, "held_results_stored_after_promotion_s": round(stored_after_s, 2),
    })  # fmt: skip
    assert figures["succeeded"] == len({warm_up, *clients.accepted})
