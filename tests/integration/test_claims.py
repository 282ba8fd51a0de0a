"""Claims and model calls on the real PostgreSQL (issue #15): a bulk run's message is one claim
and one result write, cut into model calls of ``max_batch_size``; time limits hold each call,
not the whole claim; leases are renewed beside the calls."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, event, text
from sqlalchemy.orm import Session, sessionmaker

from jobs.kinds import TextGenerationOutput
from jobs.modelsfile import load_models_file
from models.base import Adapter, Prediction, StopSignal
from tests.integration.test_runner import model_calls, rows, runner, submit, with_spec
from workers.runner import Runner

__all__ = ["runner"]  # the fixture, shared with test_runner


@pytest.fixture
def statements() -> Iterator[dict[str, int]]:
    """How many claim and finish statements reach PostgreSQL (counted as they are sent)."""
    counted = {"claim": 0, "finish": 0}
    marks = {"claim": "WITH own AS (", "finish": "WITH done AS ("}  # the statements' first lines

    def count(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        for name, mark in marks.items():
            counted[name] += mark in statement

    event.listen(Engine, "before_cursor_execute", count)
    try:
        yield counted
    finally:
        event.remove(Engine, "before_cursor_execute", count)


def test_a_bulk_runs_message_is_one_claim_and_one_result_write_in_calls_of_max_batch_size(
    runner: Runner, sessions: sessionmaker[Session], statements: dict[str, int]
) -> None:
    with_spec(runner, "text-classification", max_batch_size=8)
    adapter = runner.adapter("text-classification")
    ids = submit(sessions, "text-classification", [{"text": f"item number {i}"} for i in range(100)])
    try:
        with model_calls(adapter) as calls:
            report = runner.run(kind="text-classification", job_ids=ids)
    finally:
        with_spec(runner, "text-classification", max_batch_size=32)
    assert (report.claimed, report.succeeded) == (100, 100)
    assert statements == {"claim": 1, "finish": 1}
    assert len(calls) >= 13 and max(len(call) for call in calls) <= 8 and sum(map(len, calls)) == 100
    assert {r.status for r in rows(sessions, ids)} == {"succeeded"}


def test_a_message_larger_than_batch_chunk_size_is_claimed_in_parts(
    runner: Runner, sessions: sessionmaker[Session], statements: dict[str, int]
) -> None:
    with_spec(runner, "text-classification", max_batch_size=4, batch_chunk_size=10)
    ids = submit(sessions, "text-classification", [{"text": f"t{i}"} for i in range(25)])
    try:
        report = runner.run(kind="text-classification", job_ids=ids)
    finally:
        with_spec(runner, "text-classification", max_batch_size=32, batch_chunk_size=256)
    assert report.succeeded == 25 and statements == {"claim": 3, "finish": 3}  # 10 + 10 + 5


class Paced(Adapter[Any, Any]):
    """A generation that takes 0.4 s a call, looking for a stop request every 10 ms."""

    kind = "text-generation"
    interruptible = True

    def load_weights(self, device: str) -> None:
        pass

    def predict(self, batch: list[Any], *, stop: StopSignal | None = None) -> list[Prediction]:
        for _ in range(40):
            time.sleep(0.01)
            if stop is not None:
                stop.check()
        output = TextGenerationOutput(text="ok", finish_reason="stop", prompt_tokens=1, completion_tokens=1)
        return [Prediction(output) for _ in batch]


def test_time_limits_hold_each_model_call_not_the_whole_claim(runner: Runner, sessions: sessionmaker[Session]) -> None:
    """Four calls of 0.4 s under a soft limit of 1 s: the claim takes 1.6 s, and none stops."""
    paced = runner.loaded.adapters["text-generation"] = Paced(load_models_file("demo").kinds["text-generation"])
    paced.load("cpu")
    with_spec(runner, "text-generation", max_batch_size=2, soft_time_limit_s=1.0, time_limit_s=30)
    ids = submit(sessions, "text-generation", [{"prompt": f"p{i}"} for i in range(8)])
    try:
        started = time.monotonic()
        report = runner.run(kind="text-generation", job_ids=ids)
        took_s = time.monotonic() - started
    finally:
        with_spec(runner, "text-generation", max_batch_size=32, soft_time_limit_s=None, time_limit_s=120)
        del runner.loaded.adapters["text-generation"]
    assert took_s > 1.0  # longer than the soft limit in all
    assert (report.succeeded, report.failed) == (8, 0)
    assert {r.status for r in rows(sessions, ids)} == {"succeeded"}


def test_leases_are_renewed_while_a_claim_runs(runner: Runner, sessions: sessionmaker[Session]) -> None:
    """A lease of 0.9 s is renewed every 0.3 s by the thread beside the calls: a claim of 1.6 s
    keeps its jobs (the reconciler would take back an expired lease)."""
    paced = runner.loaded.adapters["text-generation"] = Paced(load_models_file("demo").kinds["text-generation"])
    paced.load("cpu")
    runner.lease_s = runner.beside.lease_s = 0.9
    with_spec(runner, "text-generation", max_batch_size=2)
    ids = submit(sessions, "text-generation", [{"prompt": f"q{i}"} for i in range(8)])
    seen: list[float] = []

    def lease_left() -> None:
        with sessions() as session:
            seen.append(
                session.execute(
                    text("SELECT min(EXTRACT(EPOCH FROM lease_expires_at - now())) FROM jobs WHERE id = ANY(:ids)"),
                    {"ids": ids},
                ).scalar_one()
                or 0.0
            )

    real = paced.predict

    def predict_and_look(batch: list[Any], *, stop: StopSignal | None = None) -> list[Prediction]:
        lease_left()
        return real(batch, stop=stop)

    paced.predict = predict_and_look  # type: ignore[method-assign]
    try:
        assert runner.run(kind="text-generation", job_ids=ids).succeeded == 8
    finally:
        runner.lease_s = runner.beside.lease_s = 60
        with_spec(runner, "text-generation", max_batch_size=32)
        del runner.loaded.adapters["text-generation"]
    assert len(seen) == 4 and min(seen) > 0, seen  # never expired, though the claim outlived a lease


def test_failed_jobs_are_logged_one_by_one_and_successes_once_a_claim(
    runner: Runner, sessions: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    ids = submit(sessions, "text-classification", [{"text": "fine"}, {"txt": "typo"}, {"text": "also fine"}])
    with caplog.at_level("INFO", logger="mlq.runner"):
        runner.run(kind="text-classification", job_ids=ids)
    succeeded = [r for r in caplog.records if "succeeded" in r.getMessage()]
    failed = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(succeeded) == 1 and succeeded[0].job_ids == [str(ids[0]), str(ids[2])]  # type: ignore[attr-defined]
    assert len(failed) == 1 and failed[0].job_id == str(ids[1])  # type: ignore[attr-defined]
    assert uuid.UUID(failed[0].job_id)  # type: ignore[attr-defined]


def test_a_result_from_a_model_that_cannot_read_its_language_says_so(
    runner: Runner, sessions: sessionmaker[Session]
) -> None:
    """The demo's MiniLM reads English: "我要杀了你" gets a vector all the same, and a warning."""
    chinese, english = submit(sessions, "embedding", [{"text": "我要杀了你"}, {"text": "I will hurt you"}])
    assert runner.run(kind="embedding", job_ids=[chinese, english]).succeeded == 2
    said, fine = rows(sessions, [chinese, english])
    [warning] = said.output["warnings"]
    assert "reads en" in warning and "Han script" in warning and len(said.output["embedding"]) == 384
    assert fine.output["warnings"] == []
