"""OpenAI's Files and Batch API through the official ``openai`` package, against a real ``mlq
api`` and worker: an uploaded file's lines become a bulk run's jobs, bad lines go to the error
file while the rest run, and the output file's bodies are what the synchronous routes answer."""

from __future__ import annotations

import json
import math
import time
import uuid

import httpx
import openai
import pytest

from tests.conftest import Api, create_key

BAD = {  # custom_id -> what is wrong with the line, and the parameter its error names
    "bad-url": ("url", "url"),
    "bad-body": ("body", "input"),
    "bad-list": ("list input", "input"),
}


def sdk(api: Api, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{api.url}/v1", api_key=key, max_retries=0, timeout=240)


def line(custom_id: str, body: dict[str, object], url: str = "/v1/embeddings") -> bytes:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body}).encode() + b"\n"


def embedding_file(good: int) -> bytes:
    lines = [line(f"req-{i}", {"model": "embedding", "input": f"text number {i} about films"}) for i in range(good)]
    lines.insert(10, line("bad-url", {"model": "embedding", "input": "x"}, url="/v1/completions"))
    lines.insert(500, line("bad-body", {"model": "embedding"}))
    lines.insert(900, line("bad-list", {"model": "embedding", "input": ["two", "texts"]}))
    return b"".join(lines)


def finished(client: openai.OpenAI, batch_id: str, *, timeout_s: float = 300) -> openai.types.Batch:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "cancelled"):
            return batch
        time.sleep(0.5)
    raise AssertionError(f"batch {batch_id} still {batch.status} after {timeout_s}s")


def test_a_batch_of_1000_lines_with_3_bad_runs_the_rest_and_files_them(stack: Api) -> None:
    key = create_key(stack.settings, f"oai-batch-{uuid.uuid4().hex[:6]}")
    client = sdk(stack, key)
    content = embedding_file(997)
    uploaded = client.files.create(file=("requests.jsonl", content), purpose="batch")
    assert uploaded.bytes == len(content) and uploaded.purpose == "batch" and uploaded.filename == "requests.jsonl"
    assert client.files.content(uploaded.id).content == content
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h", metadata={"team": "search"}
    )
    assert batch.object == "batch" and batch.endpoint == "/v1/embeddings" and batch.input_file_id == uploaded.id
    assert batch.request_counts is not None and batch.request_counts.total == 1000
    assert batch.request_counts.failed == 3 and batch.output_file_id is None  # the bad lines, at once
    assert batch.metadata == {"team": "search"} and batch.created_at > 1_700_000_000

    done = finished(client, batch.id)
    assert done.status == "completed" and done.completed_at is not None and done.completed_at >= done.created_at
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (997, 3)
    assert done.output_file_id and done.error_file_id

    output = client.files.content(done.output_file_id).text.splitlines()
    assert [json.loads(x)["custom_id"] for x in output] == [f"req-{i}" for i in range(997)]  # input order
    first = json.loads(output[0])
    assert first["error"] is None and first["response"]["status_code"] == 200
    body = first["response"]["body"]  # what POST /v1/embeddings answers
    assert body["object"] == "list" and body["model"] and body["usage"]["prompt_tokens"] > 0
    vector = body["data"][0]["embedding"]
    assert len(vector) == 384 and math.isclose(math.hypot(*vector), 1.0, rel_tol=1e-4)
    direct = client.embeddings.create(model="embedding", input="text number 0 about films", encoding_format="float")
    assert vector == pytest.approx(direct.data[0].embedding, abs=1e-5)

    errors = [json.loads(x) for x in client.files.content(done.error_file_id).text.splitlines()]
    assert [e["custom_id"] for e in errors] == list(BAD)
    for entry, (_, param) in zip(errors, BAD.values(), strict=True):
        assert entry["response"] is None and entry["error"]["code"] == "invalid_input"
        assert entry["error"]["message"].startswith(f"{param}:"), entry

    listed = {f.id: f for f in client.files.list()}
    assert {uploaded.id, done.output_file_id, done.error_file_id} <= set(listed)
    out_file = client.files.retrieve(done.output_file_id)
    assert out_file.purpose == "batch_output" and out_file.bytes == len("\n".join(output)) + 1

    with stack.client(key) as http:  # the same run, natively: one table, one result stream
        native = http.get(f"/v1/batches/{batch.id}").json()
        results = [json.loads(x) for x in http.get(f"/v1/batches/{batch.id}/results").text.splitlines()]
        job = http.get(f"/v1/jobs/{first['response']['request_id']}").json()
    assert native["counts"] == {"total": 1000, "queued": 0, "running": 0, "succeeded": 997, "failed": 3, "cancelled": 0}
    assert len(results) == 1000 and results[10]["custom_id"] == "bad-url" and results[10]["status"] == "failed"
    assert job["kind"] == "embedding" and job["status"] == "succeeded"  # each line is a job like any other
    assert job["output"]["embedding"] == pytest.approx(vector, abs=1e-6)


def test_chat_and_moderation_lines_answer_as_the_routes_do(stack: Api) -> None:
    key = create_key(stack.settings, f"oai-batch-{uuid.uuid4().hex[:6]}")
    client = sdk(stack, key)
    chat = line("c1", {"model": "chat", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4},
                url="/v1/chat/completions")  # fmt: skip
    streamed = line("c2", {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "stream": True},
                    url="/v1/chat/completions")  # fmt: skip
    file_id = client.files.create(file=("chat.jsonl", chat + streamed), purpose="batch").id
    done = finished(client, client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h").id)  # fmt: skip
    assert done.output_file_id and done.error_file_id
    [answer] = [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]
    body = answer["response"]["body"]
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["role"] == "assistant"
    assert body["usage"]["completion_tokens"] <= 4 and body["id"] == f"chatcmpl-{answer['response']['request_id']}"
    [refused] = [json.loads(x) for x in client.files.content(done.error_file_id).text.splitlines()]
    assert refused["custom_id"] == "c2" and refused["error"]["message"].startswith("stream:")

    moderation = line("m1", {"input": "I will hurt you"}, url="/v1/moderations")
    file_id = client.files.create(file=("mod.jsonl", moderation), purpose="batch").id
    done = finished(client, client.batches.create(
        input_file_id=file_id, endpoint="/v1/moderations", completion_window="24h").id)  # fmt: skip
    assert done.output_file_id
    [answer] = [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]
    [result] = answer["response"]["body"]["results"]
    assert isinstance(result["flagged"], bool) and result["category_scores"]


def test_cancel_files_the_lines_that_never_ran(api_without_workers: Api) -> None:
    key = create_key(api_without_workers.settings, f"oai-batch-{uuid.uuid4().hex[:6]}")
    client = sdk(api_without_workers, key)
    content = b"".join(line(f"r{i}", {"model": "embedding", "input": f"t{i}"}) for i in range(20))
    file_id = client.files.create(file=("r.jsonl", content), purpose="batch").id
    batch = client.batches.create(input_file_id=file_id, endpoint="/v1/embeddings", completion_window="24h")
    cancelled = client.batches.cancel(batch.id)  # no worker: every line is still queued
    assert cancelled.status == "cancelled" and cancelled.cancelled_at is not None and cancelled.cancelling_at
    assert cancelled.request_counts is not None and cancelled.request_counts.failed == 20
    assert cancelled.error_file_id and cancelled.output_file_id
    errors = [json.loads(x) for x in client.files.content(cancelled.error_file_id).text.splitlines()]
    assert [e["error"]["code"] for e in errors] == ["cancelled"] * 20
    assert client.files.content(cancelled.output_file_id).text == ""


def test_refusals_name_the_file_or_parameter_and_store_nothing(api_without_workers: Api) -> None:
    api = api_without_workers
    key = create_key(api.settings, f"oai-batch-{uuid.uuid4().hex[:6]}")
    other = sdk(api, create_key(api.settings, f"oai-other-{uuid.uuid4().hex[:6]}"))
    client = sdk(api, key)
    with pytest.raises(openai.BadRequestError) as purpose:
        client.files.create(file=("x.jsonl", b"{}\n"), purpose="fine-tune")
    assert purpose.value.param == "purpose"
    extra = httpx.post(  # a form field the document does not list (schemathesis cannot send one: the toml)
        f"{api.url}/v1/files", headers={"Authorization": f"Bearer {key}"},
        files={"file": ("x.jsonl", b"{}\n")}, data={"purpose": "batch", "expires_after": "3600"},
    )  # fmt: skip
    assert extra.status_code == 400 and extra.json()["error"]["param"] == "expires_after", extra.text
    mine = client.files.create(file=("x.jsonl", line("a", {"model": "embedding", "input": "x"})), purpose="batch")
    with pytest.raises(openai.NotFoundError):  # another tenant's file is not there for it
        other.files.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        other.batches.create(input_file_id=mine.id, endpoint="/v1/embeddings", completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        client.batches.create(input_file_id=str(uuid.uuid4()), endpoint="/v1/embeddings", completion_window="24h")
    with pytest.raises(openai.UnprocessableEntityError):  # an endpoint the Batch API does not run here
        client.batches.create(input_file_id=mine.id, endpoint="/v1/responses", completion_window="24h")
    empty = client.files.create(file=("empty.jsonl", b"\n"), purpose="batch")
    with pytest.raises(openai.UnprocessableEntityError):
        client.batches.create(input_file_id=empty.id, endpoint="/v1/embeddings", completion_window="24h")
    assert [b.id for b in client.batches.list()] == []  # nothing was stored
    made = client.batches.create(
        input_file_id=mine.id, endpoint="/v1/embeddings", completion_window="24h",
        extra_headers={"Idempotency-Key": "nightly-1"},
    )  # fmt: skip
    again = client.batches.create(
        input_file_id=mine.id, endpoint="/v1/embeddings", completion_window="24h",
        extra_headers={"Idempotency-Key": "nightly-1"},
    )  # fmt: skip
    assert again.id == made.id and [b.id for b in client.batches.list()] == [made.id]
    deleted = client.files.delete(mine.id)
    assert deleted.deleted and deleted.id == mine.id
    with pytest.raises(openai.NotFoundError):
        client.files.content(mine.id)
    assert client.batches.retrieve(made.id).request_counts.total == 1  # type: ignore[union-attr]  # its lines stay
