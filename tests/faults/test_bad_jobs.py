"""Jobs that are themselves the fault: a poison input that kills its process every time, a job
that never returns, a sticky GPU error, and ten concurrent requests with one Idempotency-Key.
Each fails alone, the others flow, and nothing is lost or stored twice."""

from __future__ import annotations

import threading
import time

from jobs.lifecycle import LEASE_EXPIRED
from tests.faults.conftest import MAX_ATTEMPTS, FaultStack, N, texts, write_models
from tests.faults.poison import GPU_CRASH, HANG, POISON

WORKER = ["worker", "--kinds", "embedding"]


def test_poison_job_is_dead_lettered_and_the_others_flow(fault_stack: FaultStack) -> None:
    fault_stack.env["MLQ_MODELS"] = str(write_models(fault_stack, "PoisonEmbedding"))
    fault_stack.start("worker", WORKER)
    accepted = fault_stack.submit([POISON, *texts(N - 1)])
    fault_at = time.monotonic()
    fault_stack.wait_settled()
    [(poison_id, status, code, attempts, history)] = fault_stack.sql(
        "SELECT id::text, status, error_code, attempt, history FROM jobs WHERE input->>'text' = %s", POISON
    )
    assert (status, code, attempts) == ("failed", "max_attempts_exceeded", MAX_ATTEMPTS)
    # the dead letter tells each lost attempt: which process ran it, from when to when, and why it ended
    assert [h["attempt"] for h in history] == list(range(1, MAX_ATTEMPTS + 1)), history
    for lost in history:
        assert lost["reason"] == LEASE_EXPIRED and lost["worker"] and lost["started_at"] <= lost["ended_at"], lost
    assert len({h["worker"] for h in history}) == MAX_ATTEMPTS  # each attempt killed its pool process
    # The innocent jobs of the poison's first claim lost that attempt with it, recorded the same way.
    # (That they lose no more, the poison running alone after that, is test_faults.py's
    # test_a_job_that_lost_an_attempt_runs_alone_next_time.)
    innocents = fault_stack.sql(
        "SELECT status, attempt, history FROM jobs WHERE id <> %s AND history <> '[]'::jsonb", poison_id
    )
    for status, attempt, lost_with_it in innocents:
        assert status == "succeeded" and [h["attempt"] for h in lost_with_it] == list(range(1, attempt)), lost_with_it
        assert lost_with_it[0]["worker"] == history[0]["worker"] and lost_with_it[0]["reason"] == LEASE_EXPIRED
    figures = fault_stack.settle(
        accepted, fault_at=fault_at, name="poison job kills its worker every time",
        running_at_first_crash=1 + len(innocents), poison_attempts_recorded=len(history),
    )  # fmt: skip
    assert figures["succeeded"] == N - 1 and figures["failed"] == 1


def test_a_job_over_its_hard_time_limit_fails_alone_and_the_worker_goes_on(fault_stack: FaultStack) -> None:
    fault_stack.env["MLQ_MODELS"] = str(write_models(fault_stack, "HangingEmbedding", time_limit_s=3))
    fault_stack.start("worker", WORKER)
    accepted = fault_stack.submit([HANG, *texts(N - 1)])
    figures = fault_stack.settle(accepted, fault_at=time.monotonic(), name="a job over its hard time limit")
    [(status, code, message)] = fault_stack.sql(
        "SELECT status, error_code, error_message FROM jobs WHERE input->>'text' = %s", HANG
    )
    assert (status, code) == ("failed", "timed_out") and "time limit of 3s" in message
    assert figures["succeeded"] == N - 1 and figures["failed"] == 1


def test_a_sticky_gpu_error_replaces_the_process_and_fails_one_job(fault_stack: FaultStack) -> None:
    fault_stack.env["MLQ_MODELS"] = str(write_models(fault_stack, "BrokenDeviceEmbedding"))
    fault_stack.start("worker", WORKER)
    accepted = fault_stack.submit([GPU_CRASH, *texts(N - 1)])
    figures = fault_stack.settle(accepted, fault_at=time.monotonic(), name="sticky GPU error (illegal memory access)")
    [(status, code, message)] = fault_stack.sql(
        "SELECT status, error_code, error_message FROM jobs WHERE input->>'text' = %s", GPU_CRASH
    )
    assert (status, code) == ("failed", "device_error") and "illegal memory access" in message
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
    fault_stack.settle(answers, fault_at=time.monotonic(), name="same Idempotency-Key x10 concurrently")
    assert fault_stack.sql("SELECT count(*) FROM jobs")[0][0] == 1
