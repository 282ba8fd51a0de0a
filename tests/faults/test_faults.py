"""Processes die under load: every accepted job ends in exactly one terminal state, with at
most one stored result, whatever crashes. Each fault lands on live work: a worker is held
between predict and store (``Hold``), so jobs are running, their results computed and not
stored, when it strikes. `pytest tests/faults -s` prints the figures, with that proof."""

from __future__ import annotations

import json
import os
import signal
import time

import httpx
import pytest
import redis

from mlq.embedded import free_port
from tests.conftest import Proc, wait_http
from tests.faults.conftest import FaultStack, JobState, N, assert_lost_one_attempt, children, texts, write_models
from tests.services import hold as keep_redis_db

WORKER = ["worker", "--kinds", "embedding"]


def running_at(stack: FaultStack, held: list[str]) -> dict[str, JobState]:
    """The held claim as PostgreSQL has it at the fault: every job running its first attempt."""
    at_fault = stack.jobs(held)
    assert held and {(s, a) for s, a, _, _ in at_fault.values()} == {("running", 1)}, at_fault
    return at_fault


def test_kill_9_of_the_pool_process_mid_batch(fault_stack: FaultStack) -> None:
    hold = fault_stack.hold("pool")
    worker = fault_stack.start("worker", WORKER, **hold.env)
    accepted = fault_stack.submit(texts())
    at_fault = running_at(fault_stack, hold.held(worker))
    messages = fault_stack.messages()
    [pool] = children(worker.popen.pid)
    os.kill(pool, signal.SIGKILL)  # Celery replaces the pool process; its claimed jobs' leases expire
    fault_at = time.monotonic()
    hold.off()  # the replacement runs freely
    figures = fault_stack.settle(
        accepted, fault_at=fault_at, name="kill -9 pool process",
        running_at_fault=len(at_fault), messages_at_fault=messages.total,
    )  # fmt: skip
    assert_lost_one_attempt(fault_stack, at_fault)
    assert figures["succeeded"] == N and figures["retried"] >= len(at_fault)


def test_a_job_that_lost_an_attempt_runs_alone_next_time(fault_stack: FaultStack) -> None:
    """A bulk run's message names all its jobs, and one claim takes them. Its pool process is
    killed mid-claim; Celery gives the message back (task_reject_on_worker_lost), and the new
    pool process, slow to load its model as a large one is, takes it again only after the
    reconciler has given the jobs back. Each of them lost an attempt, so each must run alone:
    no claim at attempt 2 may hold two jobs, whichever message names them."""
    fault_stack.env["MLQ_MODELS"] = str(write_models(fault_stack, "SlowStartEmbedding"))
    hold = fault_stack.hold("alone")
    worker = fault_stack.start("worker", WORKER, **hold.env)
    items = [{"custom_id": str(i), "input": {"text": text}} for i, text in enumerate(texts(N // 4))]
    lines = b"".join(json.dumps(item).encode() + b"\n" for item in items)
    with fault_stack.http() as http:
        created = http.post("/v1/batches", files={"file": ("run.jsonl", lines)}, data={"kind": "embedding"})
    assert created.status_code == 202, created.text
    accepted = [r[0] for r in fault_stack.sql("SELECT id::text FROM jobs WHERE batch_id = %s", created.json()["id"])]
    assert len(accepted) == created.json()["counts"]["total"] == N // 4
    at_fault = running_at(fault_stack, hold.held(worker))
    assert len(at_fault) == N // 4  # the message's one claim
    [pool] = children(worker.popen.pid)
    os.kill(pool, signal.SIGKILL)
    fault_at = time.monotonic()
    hold.off()
    figures = fault_stack.settle(
        accepted, fault_at=fault_at, name="a job that lost an attempt runs alone", running_at_fault=len(at_fault)
    )
    assert figures["retried"] == N // 4 and figures["retried_not_alone"] == 0  # every one lost an attempt, alone after
    assert_lost_one_attempt(fault_stack, at_fault)


def test_kill_9_of_the_whole_worker_holding_messages(fault_stack: FaultStack) -> None:
    hold = fault_stack.hold("worker")
    worker = fault_stack.start("worker", WORKER, **hold.env)
    accepted = fault_stack.submit(texts())
    at_fault = running_at(fault_stack, hold.held(worker))
    messages = fault_stack.messages()
    os.killpg(worker.popen.pid, signal.SIGKILL)  # main process and pool: its delivered messages stay unacked
    fault_at = time.monotonic()
    worker.popen.wait(timeout=30)
    hold.off()
    # redelivered only after the visibility timeout (hours): to the broker, these are lost
    lost = fault_stack.messages().unacked
    assert lost >= 1
    fault_stack.start("worker2", WORKER)
    figures = fault_stack.settle(
        accepted, fault_at=fault_at, name="kill -9 whole worker",
        running_at_fault=len(at_fault), messages_at_fault=messages.total, messages_lost=lost,
    )  # fmt: skip
    assert_lost_one_attempt(fault_stack, at_fault)
    assert figures["succeeded"] == N and figures["retried"] >= len(at_fault)


def test_rolling_restart_of_two_workers_by_sigterm(fault_stack: FaultStack) -> None:
    """Two workers; each in turn gets SIGTERM while it holds a claim, finishes that claim (warm
    shutdown), exits, and is replaced, while the other keeps its own. Nothing is retried."""
    holds = {name: fault_stack.hold(name) for name in ("a", "b")}
    workers = {name: fault_stack.start(f"worker-{name}", WORKER, **hold.env) for name, hold in holds.items()}
    accepted = fault_stack.submit(texts())
    at_fault = {}
    fault_at = time.monotonic()
    for name, hold in holds.items():
        held = running_at(fault_stack, hold.held(workers[name]))
        at_fault.update(held)
        workers[name].popen.terminate()
        wait_log(workers[name], "Warm shutdown")  # it stops taking messages; its claim is still running
        assert all(s == "running" for s, _, _, _ in fault_stack.jobs(list(held)).values())
        hold.off()
        assert workers[name].popen.wait(timeout=60) == 0, workers[name].tail()
        replacement = fault_stack.start(f"worker-{name}2", WORKER)
        while fault_stack.count("queued") and not worked(fault_stack, replacement):
            assert replacement.alive(), replacement.tail()
            time.sleep(0.1)
    figures = fault_stack.settle(
        accepted, fault_at=fault_at, name="SIGTERM rolling restart of two workers", running_at_fault=len(at_fault)
    )
    for job_id, (status, attempt, history, worker) in fault_stack.jobs(list(at_fault)).items():
        # finished by the worker that was told to stop, in the attempt it had
        assert (status, attempt, history, worker) == ("succeeded", 1, [], at_fault[job_id][3]), job_id
    assert figures["succeeded"] == N and figures["retried"] == 0


def test_redis_flushdb_during_processing(fault_stack: FaultStack) -> None:
    hold = fault_stack.hold("flush")
    worker = fault_stack.start("worker", WORKER, **hold.env)
    accepted = fault_stack.submit(texts())
    at_fault = running_at(fault_stack, hold.held(worker))
    before, queued = fault_stack.messages(), fault_stack.count("queued")
    assert before.total > 0 and queued > 0, (before, queued)
    redis_url = fault_stack.settings.require_redis_url()
    redis.Redis.from_url(redis_url).flushdb()  # every wake-up is gone, delivered or not
    fault_at = time.monotonic()
    keep_redis_db(redis_url)  # the database stays this run's
    after = fault_stack.messages()
    hold.off()
    figures = fault_stack.settle(
        accepted, fault_at=fault_at, name="Redis loses every message (FLUSHDB)", running_at_fault=len(at_fault),
        queued_at_fault=queued, messages_at_fault=before.total, messages_lost=before.total - after.total,
    )  # fmt: skip
    assert after.total == 0 and figures["succeeded"] == N


def test_crash_between_commit_and_publish(fault_stack: FaultStack) -> None:
    """An API killed (SIGKILL, by its test-only hook) right after its first INSERT commits,
    before it publishes: the clients get no answer, the rows are durable and unpublished. The
    reconciler publishes them; the clients' retries (same Idempotency-Keys) get the same jobs."""
    port = free_port()
    doomed = fault_stack.start("api-doomed", ["api", "--port", str(port)], MLQ_FAULT_CRASH_BEFORE_PUBLISH="1")
    wait_http(f"http://127.0.0.1:{port}/healthz", doomed)
    sentences, keys = texts(), [f"crash-{i}" for i in range(N)]
    with pytest.raises(httpx.TransportError):  # the connection dies with the process
        fault_stack.submit(sentences, url=f"http://127.0.0.1:{port}", keys=keys)
    assert doomed.popen.wait(timeout=30) == -signal.SIGKILL
    fault_at = time.monotonic()
    committed = {row[0]: row[1:] for row in fault_stack.sql("SELECT id::text, status, attempt FROM jobs")}
    assert committed and set(committed.values()) == {("queued", 0)}
    assert fault_stack.messages().total == 0  # not one of them was published
    while fault_stack.messages().queued == 0:  # ... until the reconciler finds them
        assert time.monotonic() - fault_at < 30, "the reconciler did not publish the orphaned jobs"
        time.sleep(0.1)
    published_s = round(time.monotonic() - fault_at, 1)
    fault_stack.start("worker", WORKER)
    fault_stack.wait_for("succeeded", len(committed))
    accepted = fault_stack.submit(sentences, keys=keys)  # the clients try again, on a live API
    assert set(committed) <= set(accepted)
    fault_stack.settle(
        accepted, fault_at=fault_at, name="crash between commit and publish (kill -9 of the API)",
        committed_at_crash=len(committed), messages_lost=len(committed), republished_after_s=published_s,
    )  # fmt: skip
    for status, attempt, history, _ in fault_stack.jobs(list(committed)).values():
        assert (status, attempt, history) == ("succeeded", 1, [])


def test_redis_stopped_for_ten_seconds_then_started(fault_stack: FaultStack, tmp_path: object) -> None:
    """A Redis of this test's own (no persistence): while it is down the API still accepts,
    /readyz says degraded, and when it is back the reconciler publishes what waited."""
    from pathlib import Path

    from mlq.embedded import start_redis

    port = free_port()
    folder = Path(str(tmp_path))
    broker = start_redis(folder, port=port, persist=False)
    url = f"redis://127.0.0.1:{port}/0"
    for name in ("api", "reconciler"):  # this test's own API and reconciler use the stoppable Redis
        proc = fault_stack.procs.pop(name)
        os.killpg(proc.popen.pid, signal.SIGKILL)
        proc.stop(timeout_s=5)
    api_port = free_port()
    api = fault_stack.start("api-r", ["api", "--port", str(api_port)], MLQ_REDIS_URL=url, MLQ_PUBLISH_TIMEOUT_S="0.5")
    wait_http(f"http://127.0.0.1:{api_port}/healthz", api)
    fault_stack.start("reconciler-r", ["reconcile"], MLQ_REDIS_URL=url)
    hold = fault_stack.hold("redis")
    worker = fault_stack.start("worker", WORKER, MLQ_REDIS_URL=url, **hold.env)
    api_url = f"http://127.0.0.1:{api_port}"
    accepted = fault_stack.submit(texts(N // 2), url=api_url)
    at_fault = running_at(fault_stack, hold.held(worker))
    messages = fault_stack.messages(url)
    assert messages.total > 0
    broker.stop()  # no persistence: every message in it is gone
    fault_at = time.monotonic()
    accepted += fault_stack.submit(texts(N // 2), url=api_url)  # accepted while Redis is down
    ready = httpx.get(f"{api_url}/readyz", timeout=10).json()
    assert ready["status"] == "degraded"
    hold.off()  # the held claim is stored while the broker is away
    time.sleep(max(0.0, 10 - (time.monotonic() - fault_at)))
    broker = start_redis(folder, port=port, persist=False)
    try:
        figures = fault_stack.settle(
            accepted, fault_at=fault_at, name="Redis stopped 10 s, then started", running_at_fault=len(at_fault),
            messages_at_fault=messages.total, messages_lost=messages.total,
        )  # fmt: skip
        assert figures["succeeded"] == N
    finally:
        broker.stop()


def wait_log(proc: Proc, text: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in proc.log_path.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"{proc.name} never logged {text!r}:\n{proc.tail()}"
        time.sleep(0.05)


def worked(stack: FaultStack, proc: Proc) -> bool:
    """Whether ``proc``'s worker has finished a job (its jobs name it ``…-<pid>@host/<pool pid>``)."""
    return bool(stack.sql("SELECT 1 FROM jobs WHERE status = 'succeeded' AND worker LIKE %s", f"%-{proc.popen.pid}@%"))
