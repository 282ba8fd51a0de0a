"""The runner on the real PostgreSQL: claim → predict → store, without Celery."""

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from jobs import keys, lifecycle, store
from jobs.artifacts import LocalArtifactStore
from jobs.errors import InvalidInput, OutOfMemory
from jobs.kinds import EmbeddingInput, EmbeddingOutput
from jobs.modelsfile import load_models_file
from models.base import Adapter, Blob, Prediction, StopSignal
from workers.runner import Runner


@pytest.fixture
def runner(sessions: sessionmaker[Session], data_dir: Path) -> Runner:
    return Runner(
        sessions=sessions,
        models=load_models_file("demo"),
        artifacts=LocalArtifactStore(data_dir / "artifacts"),
        data_dir=data_dir,
        worker="test-worker",
        lease_s=60,
        fill=False,  # these tests look at exactly the jobs they submit; filling has its own test
    )


def submit(sessions: sessionmaker[Session], kind: str, inputs: list[dict[str, Any]]) -> list[uuid.UUID]:
    with sessions.begin() as session:
        tenant = keys.ensure_tenant(session, name="runner-tests")
        return [
            store.insert_job(
                session,
                tenant_id=tenant,
                job=store.NewJob(
                    kind=kind, model="m", profile="demo", input=i, priority=5, metadata={}, max_attempts=3
                ),
            )[0].id
            for i in inputs
        ]


def rows(sessions: sessionmaker[Session], ids: list[uuid.UUID]) -> list[Any]:
    with sessions() as session:
        tenant = keys.ensure_tenant(session, name="runner-tests")
        return [store.get_job(session, tenant_id=tenant, job_id=i) for i in ids]


def test_real_classifier_batch_succeeds_and_a_redelivery_is_a_no_op(
    runner: Runner, sessions: sessionmaker[Session]
) -> None:
    ids = submit(sessions, "text-classification", [{"text": "这是一条新闻标题"}, {"text": "sports news", "top_k": 2}])
    report = runner.run(kind="text-classification", job_ids=ids)
    assert (report.claimed, report.succeeded, report.failed) == (2, 2, 0)
    again = runner.run(kind="text-classification", job_ids=ids)  # the same message, delivered twice
    assert again.claimed == 0
    first, second = rows(sessions, ids)
    assert first.status == second.status == "succeeded" and first.attempt == second.attempt == 1
    assert len(first.output["labels"]) == 4 and len(second.output["labels"]) == 2
    assert abs(sum(label["score"] for label in first.output["labels"]) - 1) < 1e-4


class Flaky(Adapter[Any, Any]):
    """A model that raises on the word 'boom', asks for memory on 'oom', and emits a blob."""

    kind = "embedding"

    def load_weights(self, device: str) -> None:
        pass

    def prepare(self, item: Any) -> Any:
        if item.text == "undecodable":
            raise InvalidInput("input.text could not be decoded")
        return item

    def predict(self, batch: list[Any], *, stop: StopSignal | None = None) -> list[Prediction]:
        if any(item.text == "boom" for item in batch):
            raise RuntimeError("the model exploded")
        if any(item.text == "oom" for item in batch):
            raise OutOfMemory("CUDA out of memory")
        return [
            Prediction(EmbeddingOutput(embedding=[1.0], dimensions=1), [Blob("v.txt", "text/plain", b"1")])
            for _ in batch
        ]


def test_bad_jobs_fail_alone_and_transient_errors_requeue(runner: Runner, sessions: sessionmaker[Session]) -> None:
    runner.loaded.adapters["embedding"] = Flaky(load_models_file("demo").kinds["embedding"])
    ids = submit(
        sessions, "embedding", [{"text": "fine"}, {"text": "boom"}, {"text": "undecodable"}, {"text": "also fine"}]
    )
    report = runner.run(kind="embedding", job_ids=ids)
    assert (report.succeeded, report.failed) == (2, 2)
    fine, boom, undecodable, also = rows(sessions, ids)
    assert fine.status == also.status == "succeeded"
    assert boom.status == "failed" and boom.error_code == "model_error" and "exploded" in boom.error_message
    assert undecodable.error_code == "invalid_input" and "decoded" in undecodable.error_message
    artifact = Path(runner.artifacts.root) / str(fine.id) / "v.txt"  # type: ignore[attr-defined]
    assert artifact.read_bytes() == b"1"

    [oom] = submit(sessions, "embedding", [{"text": "oom"}])
    assert runner.run(kind="embedding", job_ids=[oom]).released == 1
    [row] = rows(sessions, [oom])
    assert row.status == "queued" and row.attempt == 1 and "out_of_memory" in row.error_message


def test_stored_input_that_no_longer_validates_fails_with_the_field(
    runner: Runner, sessions: sessionmaker[Session]
) -> None:
    [job_id] = submit(sessions, "text-classification", [{"txt": "typo"}])
    runner.run(kind="text-classification", job_ids=[job_id])
    [row] = rows(sessions, [job_id])
    assert row.status == "failed" and row.error_code == "invalid_input" and "input.text" in row.error_message


def test_a_model_that_cannot_load_fails_its_jobs_with_the_reason(
    sessions: sessionmaker[Session], data_dir: Path
) -> None:
    from jobs.modelsfile import parse_models

    broken = Runner(
        sessions=sessions,
        models=parse_models({"kinds": {"embedding": {"model": "package:no_such_weights"}}}, source="t"),
        artifacts=LocalArtifactStore(data_dir / "artifacts"),
        data_dir=data_dir,
        worker="test-worker",
        lease_s=60,
    )
    [job_id] = submit(sessions, "embedding", [{"text": "hello"}])
    report = broken.run(kind="embedding", job_ids=[job_id])
    [row] = rows(sessions, [job_id])
    assert report.failed == 1 and row.status == "failed" and row.error_code == "model_not_configured"
    assert "no_such_weights" in row.error_message


def test_one_message_fills_its_batch_with_other_queued_jobs_of_the_kind(
    runner: Runner, sessions: sessionmaker[Session]
) -> None:
    runner.fill = True
    ids = submit(sessions, "text-classification", [{"text": f"news {i}"} for i in range(5)])
    report = runner.run(kind="text-classification", job_ids=ids[:1])  # one job's message
    assert 5 <= report.claimed <= runner.loaded.spec("text-classification").max_batch_size
    assert {r.status for r in rows(sessions, ids)} == {"succeeded"}
    runner.run(kind="text-classification", job_ids=ids[1:2])  # that job's own message arrives later
    assert all(r.attempt == 1 for r in rows(sessions, ids))


class Greedy(Flaky):
    """Runs out of memory on more than two items at once."""

    def predict(self, batch: list[Any], *, stop: StopSignal | None = None) -> list[Prediction]:
        if len(batch) > 2:
            raise OutOfMemory("CUDA out of memory: tried to allocate 2.00 GiB")
        return super().predict(batch, stop=stop)


def test_out_of_memory_splits_the_batch_before_failing_anyone(runner: Runner, sessions: sessionmaker[Session]) -> None:
    runner.loaded.adapters["embedding"] = Greedy(load_models_file("demo").kinds["embedding"])
    ids = submit(sessions, "embedding", [{"text": f"t{i}"} for i in range(7)])
    report = runner.run(kind="embedding", job_ids=ids)
    assert (report.succeeded, report.failed, report.released) == (7, 0, 0)
    assert {r.status for r in rows(sessions, ids)} == {"succeeded"}


def with_spec(runner: Runner, kind: str, **changes: Any) -> Runner:
    """The same runner serving ``kind`` with changed models-file settings."""
    models = runner.loaded.models
    spec = models.kinds[kind].model_copy(update=changes)
    runner.loaded.models = models.model_copy(update={"kinds": {**models.kinds, kind: spec}})
    if kind in runner.loaded.adapters:
        runner.loaded.adapters[kind].spec = spec
    return runner


def test_soft_time_limit_stops_a_real_generation_between_tokens_and_the_process_goes_on(
    runner: Runner, sessions: sessionmaker[Session]
) -> None:
    with_spec(runner, "text-generation", soft_time_limit_s=0.001, time_limit_s=120)
    [long] = submit(sessions, "text-generation", [{"prompt": "once upon a time", "max_new_tokens": 100}])
    report = runner.run(kind="text-generation", job_ids=[long])
    [row] = rows(sessions, [long])
    assert (report.failed, row.status, row.error_code) == (1, "failed", "timed_out")
    assert "soft time limit of 0.001s" in row.error_message and row.output is None
    with_spec(runner, "text-generation", soft_time_limit_s=None)
    [next_job] = submit(sessions, "text-generation", [{"prompt": "once upon a time", "max_new_tokens": 5}])
    assert runner.run(kind="text-generation", job_ids=[next_job]).succeeded == 1  # same process, next job


class SlowGeneration(Adapter[Any, Any]):
    """Generates one token per 10 ms for 60 s unless asked to stop (looks like a long diffusion run)."""

    kind = "text-generation"
    interruptible = True

    def load_weights(self, device: str) -> None:
        self.steps = 0

    def predict(self, batch: list[Any], *, stop: StopSignal | None = None) -> list[Prediction]:
        assert stop is not None, "the runner gives an interruptible adapter its stop signal"
        for self.steps in range(6000):
            if stop.is_set():
                break
            time.sleep(0.01)
        stop.check()
        raise AssertionError("the generation was never stopped")


def test_cancel_reaches_a_running_generation_between_steps(runner: Runner, sessions: sessionmaker[Session]) -> None:
    slow = runner.loaded.adapters["text-generation"] = SlowGeneration(load_models_file("demo").kinds["text-generation"])
    slow.load("cpu")
    [job_id] = submit(sessions, "text-generation", [{"prompt": "a very long story"}])
    worker = threading.Thread(target=runner.run, kwargs={"kind": "text-generation", "job_ids": [job_id]})
    worker.start()
    deadline = time.monotonic() + 60
    while slow.steps < 10:  # running, a few steps in
        assert time.monotonic() < deadline and worker.is_alive(), "the generation never started"
        time.sleep(0.01)
    with sessions.begin() as session:
        tenant = keys.ensure_tenant(session, name="runner-tests")
        asked = lifecycle.cancel_job(session, tenant_id=tenant, job_id=job_id)
    assert asked is not None and asked.status == "running" and asked.cancel_requested_at is not None
    worker.join(timeout=30)
    assert not worker.is_alive()
    [row] = rows(sessions, [job_id])
    assert (row.status, row.error_code, row.output) == ("cancelled", "cancelled", None)
    assert slow.steps < 6000 - 1


@contextlib.contextmanager
def model_calls(adapter: Adapter[Any, Any]) -> Iterator[list[list[int]]]:
    """The sizes of the items of each model call the adapter makes meanwhile."""
    calls: list[list[int]] = []
    predict = adapter.predict

    def recording(batch: list[Any], *, stop: StopSignal | None = None) -> list[Prediction]:
        calls.append([adapter.size(item) for item in batch])
        return predict(batch, stop=stop)

    adapter.predict = recording  # type: ignore[method-assign]
    try:
        yield calls
    finally:
        del adapter.predict


def test_a_token_budget_keeps_one_long_text_from_padding_the_whole_batch(
    runner: Runner, sessions: sessionmaker[Session]
) -> None:
    with_spec(runner, "embedding", max_batch_tokens=64)
    adapter = runner.adapter("embedding")
    texts = ["short one", "another short", "a third", " ".join(["a long sentence about many things"] * 8), "tail"]
    try:
        with model_calls(adapter) as calls:
            report = runner.run(kind="embedding", job_ids=submit(sessions, "embedding", [{"text": t} for t in texts]))
    finally:
        with_spec(runner, "embedding", max_batch_tokens=None)
    assert report.succeeded == 5 and len(calls) >= 2
    sizes = [adapter.size(adapter.prepare(EmbeddingInput(text=t))) for t in texts]
    assert sorted(size for call in calls for size in call) == sorted(sizes)  # each text once
    for call in calls:  # each call within 64 padded tokens, or a lone item over it
        assert len(call) == 1 or len(call) * max(call) <= 64, calls
    assert max(len(call) for call in calls) >= 3  # short texts still share a call


def test_texts_are_ordered_by_length_into_calls_that_pad_less(runner: Runner, sessions: sessionmaker[Session]) -> None:
    """No token budget set: 16 short and 16 long texts, interleaved, run in calls of similar
    lengths (on CPU a call costs about 64 padded tokens), and each job gets its own text's
    embedding back, the same as when it runs alone."""
    adapter = runner.adapter("embedding")
    # what a call costs is measured when the model loads, and a busy machine moves it: this test
    # is about the cutting, so it gives the cost (MiniLM on one CPU thread: about 25-64 tokens)
    runner.loaded.call_costs["embedding"] = 64.0
    short, long = "a short text", " ".join(["a much longer sentence about the weather and trains"] * 3)
    texts = [f"{short} {i}" if i % 2 else f"{long} {i}" for i in range(32)]
    ids = submit(sessions, "embedding", [{"text": t} for t in texts])
    with model_calls(adapter) as calls:
        assert runner.run(kind="embedding", job_ids=ids).succeeded == 32
    assert len(calls) >= 2 and sorted(len(call) for call in calls) == [16, 16]
    assert all(max(call) - min(call) <= 2 for call in calls), calls  # no short text padded to a long one
    padded = sum(len(call) * max(call) for call in calls)
    assert padded < 32 * max(size for call in calls for size in call)
    alone = {t: adapter.predict([adapter.prepare(EmbeddingInput(text=t))])[0].output.embedding for t in texts[:2]}
    first, second = rows(sessions, ids[:2])
    for row, text in ((first, texts[0]), (second, texts[1])):
        assert max(abs(a - b) for a, b in zip(row.output["embedding"], alone[text], strict=True)) < 1e-4


def test_a_memory_budget_unloads_the_least_recently_used_model(sessions: sessionmaker[Session], data_dir: Path) -> None:
    lean = Runner(
        sessions=sessions, models=load_models_file("demo"), artifacts=LocalArtifactStore(data_dir / "artifacts"),
        data_dir=data_dir, worker="lean-worker", lease_s=60, fill=False, memory_budget_bytes=60 * 2**20,
    )  # fmt: skip
    classifier = lean.adapter("text-classification")  # tiny: well under the budget
    assert 0 < lean.loaded.footprints["text-classification"] < 60 * 2**20
    lean.adapter("embedding")  # MiniLM, about 87 MiB: over the budget alone, so the classifier goes
    assert set(lean.loaded.adapters) == {"embedding"} and lean.loaded.footprints["embedding"] > 60 * 2**20
    [job] = submit(sessions, "text-classification", [{"text": "这是一条新闻标题"}])
    assert lean.run(kind="text-classification", job_ids=[job]).succeeded == 1  # loaded again when needed
    assert (
        set(lean.loaded.adapters) == {"text-classification"}
        and lean.loaded.adapters["text-classification"] is not classifier
    )


class Unstorable(Adapter[Any, Any]):
    """For the text 'nan', an output PostgreSQL refuses: a NaN, which jsonb cannot hold."""

    kind = "embedding"

    def load_weights(self, device: str) -> None:
        pass

    def predict(self, batch: list[Any], *, stop: StopSignal | None = None) -> list[Prediction]:
        return [
            Prediction(EmbeddingOutput(embedding=[float("nan") if item.text == "nan" else 1.0], dimensions=1))
            for item in batch
        ]


def test_outputs_postgresql_cannot_store_fail_their_jobs_instead_of_looping(
    runner: Runner, sessions: sessionmaker[Session]
) -> None:
    runner.loaded.adapters["embedding"] = Unstorable(load_models_file("demo").kinds["embedding"])
    [bad] = submit(sessions, "embedding", [{"text": "nan"}])
    report = runner.run(kind="embedding", job_ids=[bad])
    [row] = rows(sessions, [bad])
    assert (report.failed, row.status, row.error_code) == (1, "failed", "result_not_storable")
    assert "could not be stored" in row.error_message and row.attempt == 1
    # in a batch, only the job whose result is refused fails; the others keep theirs
    ids = submit(sessions, "embedding", [{"text": "fine"}, {"text": "nan"}, {"text": "also fine"}])
    report = runner.run(kind="embedding", job_ids=ids)
    fine, nan, also = rows(sessions, ids)
    assert (report.succeeded, report.failed) == (2, 1)
    assert fine.status == also.status == "succeeded" and fine.output["embedding"] == [1.0]
    assert (nan.status, nan.error_code) == ("failed", "result_not_storable")


def test_nul_characters_are_dropped_from_stored_text(sessions: sessionmaker[Session]) -> None:
    [job_id] = submit(sessions, "text-generation", [{"prompt": "x"}])
    with sessions.begin() as session:
        [claimed] = lifecycle.claim(session, job_ids=[job_id], kind="text-generation", worker="w", lease_s=30)
        output = {"text": "a\x00b", "finish_reason": "stop", "prompt_tokens": 1, "completion_tokens": 2}
        outcome = lifecycle.Outcome(job_id=job_id, attempt=claimed.attempt, output=output)
        written = lifecycle.finish(session, outcomes=[outcome])
    [row] = rows(sessions, [job_id])
    assert written == [job_id] and row.status == "succeeded" and row.output["text"] == "ab"
