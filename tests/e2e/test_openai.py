"""The official ``openai`` package against a real ``mlq api`` and worker: the routes it calls
answer as it expects, each call is jobs stored like any other, and refusals come back as
the SDK's own exceptions, naming the parameter, with nothing stored."""

from __future__ import annotations

import asyncio
import math
import uuid

import httpx
import openai
import pytest

from tests.conftest import Api, create_key

TEXTS = ["I like films and games", "a kitten sleeps in the sun", "the stock market fell today"]


@pytest.fixture
def tenant_key(stack: Api) -> str:
    return create_key(stack.settings, f"openai-{uuid.uuid4().hex[:6]}")


def sdk(stack: Api, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key=key, max_retries=0, timeout=240)


def jobs_of(stack: Api, key: str) -> list[dict[str, object]]:
    with stack.client(key) as http:
        page: list[dict[str, object]] = http.get("/v1/jobs", params={"limit": 100}).json()["data"]
    return page


def test_models_are_listed_and_retrieved_by_kind_or_model_name(stack: Api, tenant_key: str) -> None:
    client = sdk(stack, tenant_key)
    listed = {m.id: m for m in client.models.list()}
    assert "embedding" in listed and len(listed) == 11
    embedding = listed["embedding"]
    assert embedding.object == "model" and embedding.owned_by == "mlq" and embedding.created > 0
    extra = embedding.model_extra or {}
    assert extra["kind"] == "embedding" and "text" in extra["input_schema"]["properties"]  # mlq's fields too
    assert client.models.retrieve("embedding").id == "embedding"
    alias = client.models.retrieve(extra["model"])  # the served model's name is an alias
    assert alias.id in listed and (alias.model_extra or {})["model"] == extra["model"]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_embeddings_are_jobs_and_match_the_native_api(stack: Api, tenant_key: str) -> None:
    client = sdk(stack, tenant_key)
    answer = client.embeddings.create(model="embedding", input=TEXTS)  # the SDK asks for base64
    assert [d.index for d in answer.data] == [0, 1, 2]
    vectors = [d.embedding for d in answer.data]
    assert all(len(v) == 384 and math.isclose(math.hypot(*v), 1.0, rel_tol=1e-4) for v in vectors)
    assert answer.usage.prompt_tokens == answer.usage.total_tokens > len(TEXTS)
    floats = client.embeddings.create(model="embedding", input=TEXTS[0], encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(vectors[0], abs=1e-6)  # float32 on the wire, same vector
    job_ids = (answer.model_extra or {})["mlq"]["job_ids"]
    with stack.client(tenant_key) as http:  # each text was a job, stored like any other
        jobs = [http.get(f"/v1/jobs/{job_id}").json() for job_id in job_ids]
        native = http.post("/v1/jobs", params={"wait": 60}, json={"kind": "embedding", "input": {"text": TEXTS[1]}})
    assert [j["kind"] for j in jobs] == ["embedding"] * 3 and [j["input"]["text"] for j in jobs] == TEXTS
    assert {j["status"] for j in jobs} == {"succeeded"}
    assert native.json()["output"]["embedding"] == pytest.approx(vectors[1], abs=1e-6)


def test_one_call_through_the_async_client(stack: Api, tenant_key: str) -> None:
    async def embed() -> list[float]:
        async with openai.AsyncOpenAI(base_url=f"{stack.url}/v1", api_key=tenant_key, max_retries=0) as client:
            answer = await client.embeddings.create(model="embedding", input="kitten")
            return answer.data[0].embedding

    assert len(asyncio.run(embed())) == 384


def test_refusals_are_the_sdks_exceptions_naming_the_parameter_and_store_nothing(stack: Api, tenant_key: str) -> None:
    client = sdk(stack, tenant_key)
    before = len(jobs_of(stack, tenant_key))
    with pytest.raises(openai.BadRequestError) as empty:
        client.embeddings.create(model="embedding", input=["fine", "   "])
    assert empty.value.param == "input[1]" and "empty" in empty.value.message
    with pytest.raises(openai.BadRequestError) as sized:
        client.embeddings.create(model="embedding", input="x", dimensions=64)
    assert sized.value.param == "dimensions"
    with pytest.raises(openai.BadRequestError) as tokens:
        client.embeddings.create(model="embedding", input=[[1, 2, 3]])  # type: ignore[list-item]
    assert tokens.value.param == "input" and tokens.value.type == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as other_kind:
        client.embeddings.create(model="moderation", input="x")
    assert other_kind.value.param == "model"
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="text-embedding-3-small", input="x")
    assert len(jobs_of(stack, tenant_key)) == before  # nothing was stored
    with pytest.raises(openai.AuthenticationError) as unknown:
        sdk(stack, "mlq_000000000000_not-a-key").embeddings.create(model="embedding", input="x")
    assert unknown.value.type == "authentication_error"
    # the native routes keep their own shape
    refused = httpx.post(f"{stack.url}/v1/jobs", json={"kind": "embedding", "input": {}}, timeout=30,
                         headers={"Authorization": f"Bearer {tenant_key}"})  # fmt: skip
    assert refused.status_code == 422 and isinstance(refused.json()["detail"], list)


def test_a_key_without_read_cannot_get_results_through_these_routes(stack: Api) -> None:
    submit_only = create_key(stack.settings, f"openai-w-{uuid.uuid4().hex[:6]}", "submit")
    with pytest.raises(openai.PermissionDeniedError) as denied:
        sdk(stack, submit_only).embeddings.create(model="embedding", input="x")
    assert "read" in denied.value.message


def test_chat_completions_are_chat_jobs(stack: Api, tenant_key: str) -> None:
    client = sdk(stack, tenant_key)
    conversation = [{"role": "developer", "content": "be brief"}, {"role": "user", "content": "hello there"}]
    first = client.chat.completions.create(model="chat", messages=conversation, max_tokens=5, temperature=0)  # type: ignore[arg-type]
    [choice] = first.choices
    assert first.id.startswith("chatcmpl-") and first.object == "chat.completion"
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length") and 0 < first.usage.completion_tokens <= 5  # type: ignore[union-attr]
    parts = [{"role": "user", "content": [{"type": "text", "text": "hello there"}]}]
    again = client.chat.completions.create(
        model="chat",
        messages=[conversation[0], *parts],
        max_completion_tokens=5,
        temperature=0,  # type: ignore[list-item]
    )
    assert again.choices[0].message.content == choice.message.content  # greedy: the same text
    [job_id] = (first.model_extra or {})["mlq"]["job_ids"]
    with stack.client(tenant_key) as http:
        job = http.get(f"/v1/jobs/{job_id}").json()
    assert job["kind"] == "chat" and job["input"]["messages"][0]["role"] == "system"
    assert job["input"]["max_new_tokens"] == 5 and job["output"]["message"]["content"] == choice.message.content


def test_completions_run_a_job_per_prompt(stack: Api, tenant_key: str) -> None:
    client = sdk(stack, tenant_key)
    answer = client.completions.create(model="text-generation", prompt=["once upon", "the weather"], max_tokens=4,
                                       temperature=0, stop=["\n"])  # fmt: skip
    assert answer.object == "text_completion" and [c.index for c in answer.choices] == [0, 1]
    assert all(isinstance(c.text, str) and c.finish_reason in ("stop", "length") for c in answer.choices)
    assert answer.usage is not None and 0 < answer.usage.completion_tokens <= 8
    assert len((answer.model_extra or {})["mlq"]["job_ids"]) == 2


def test_chat_and_completion_refusals_name_the_parameter(stack: Api, tenant_key: str) -> None:
    client = sdk(stack, tenant_key)
    before = len(jobs_of(stack, tenant_key))
    hello = [{"role": "user", "content": "hi"}]
    cases = [
        ({"stream": True}, "stream"),
        ({"n": 2}, "n"),
        ({"presence_penalty": 0.5}, "presence_penalty"),  # not one mlq reads: said, not ignored
        ({"max_completion_tokens": 100_000}, "max_completion_tokens"),  # over the kind's max_new_tokens
    ]
    for extra, param in cases:
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(model="chat", messages=hello, **extra)  # type: ignore[arg-type, call-overload]
        assert refused.value.param == param, (extra, refused.value.message)
    with pytest.raises(openai.BadRequestError) as empty:
        client.completions.create(model="text-generation", prompt=["fine", " "])
    assert empty.value.param == "prompt[1]"
    with pytest.raises(openai.BadRequestError) as wrong_kind:
        client.completions.create(model="chat", prompt="x")
    assert wrong_kind.value.param == "model"
    assert len(jobs_of(stack, tenant_key)) == before  # nothing was stored


def png_data_url() -> str:
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 40, 40)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_moderations_give_a_result_per_text_or_one_for_the_parts_of_an_input(stack: Api, tenant_key: str) -> None:
    client = sdk(stack, tenant_key)
    texts = ["I am going to hurt you", "what a lovely morning"]
    answer = client.moderations.create(input=texts)  # no model: the moderation kind
    assert answer.id.startswith("modr-") and len(answer.results) == 2
    first = answer.results[0]
    scores = {n: getattr(first.category_scores, n) for n in ("violence", "hate", "harassment", "sexual", "self_harm")}
    assert all(0.0 <= s <= 1.0 for s in scores.values()), scores  # OpenAI's names, read by the SDK
    with stack.client(tenant_key) as http:
        native = http.post("/v1/jobs", params={"wait": 60}, json={"kind": "moderation", "input": {"text": texts[0]}})
    assert native.json()["output"]["category_scores"]["violence"] == pytest.approx(scores["violence"])
    assert first.flagged == native.json()["output"]["flagged"]
    parts = [{"type": "text", "text": "hello"}, {"type": "image_url", "image_url": {"url": png_data_url()}}]
    mixed = client.moderations.create(model="moderation", input=parts)  # type: ignore[list-item]
    [one] = mixed.results  # the parts of one input: one result
    applied = one.category_applied_input_types.model_extra or {}  # spam: mlq's own category
    assert set(applied["spam"]) == {"text", "image"}  # the demo maps the image model's labels to spam
    assert len((mixed.model_extra or {})["mlq"]["job_ids"]) == 2
    with pytest.raises(openai.BadRequestError) as plain:
        bad = [{"type": "image_url", "image_url": {"url": "data:image/png,not-base64"}}]
        client.moderations.create(input=bad)  # type: ignore[list-item]
    assert plain.value.param == "input"


def test_the_sdk_pages_through_bulk_runs_to_the_end(api_without_workers: Api) -> None:
    """``client.batches.list()`` pages with ``after`` and stops on ``has_more``: it once got the
    same page forever."""
    key = create_key(api_without_workers.settings, f"openai-b-{uuid.uuid4().hex[:6]}")
    items = [{"custom_id": "a", "input": {"text": "x"}}]
    with api_without_workers.client(key) as http:
        made = [http.post("/v1/batches", json={"kind": "embedding", "items": items}).json()["id"] for _ in range(5)]
        page = http.get("/v1/batches", params={"limit": 2}).json()
        unknown = http.get("/v1/batches", params={"after": str(uuid.uuid4())})
    assert page["object"] == "list" and page["has_more"] and page["last_id"] == page["data"][-1]["id"]
    assert unknown.status_code == 422 and unknown.json()["detail"][0]["loc"] == ["query", "after"]
    client = openai.OpenAI(base_url=f"{api_without_workers.url}/v1", api_key=key, max_retries=0)
    assert [b.id for b in client.batches.list(limit=2)] == made[::-1]  # newest first, each once, then the end


def test_images_come_as_base64_or_as_the_jobs_artifact(stack: Api, tenant_key: str) -> None:
    import base64
    import io

    from PIL import Image

    client = sdk(stack, tenant_key)
    inline = client.images.generate(model="image-generation", prompt="a red square", n=2, size="64x64",
                                    response_format="b64_json")  # fmt: skip
    assert len(inline.data) == 2
    for image in inline.data:
        assert Image.open(io.BytesIO(base64.b64decode(image.b64_json or ""))).size == (64, 64)
    linked = client.images.generate(model="image-generation", prompt="a red square", size="64x64")
    [one] = linked.data
    assert one.url is not None and "/artifacts/" in one.url
    fetched = httpx.get(one.url, headers={"Authorization": f"Bearer {tenant_key}"}, timeout=30)
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(fetched.content)).size == (64, 64)
    with pytest.raises(openai.BadRequestError) as odd:
        client.images.generate(model="image-generation", prompt="x", size="65x64")  # type: ignore[arg-type]
    assert odd.value.param == "size"  # a width the model cannot make (a multiple of 8)
    with pytest.raises(openai.BadRequestError) as quality:
        client.images.generate(model="image-generation", prompt="x", quality="hd")
    assert quality.value.param == "quality"


def test_a_call_whose_job_was_cancelled_is_a_409_not_a_server_error(api_without_workers: Api) -> None:
    """Found by the fuzzer: a call whose Idempotency-Key named a job its tenant had cancelled
    answered 500 ("ended cancelled"), as if the server had failed."""
    key = create_key(api_without_workers.settings, f"openai-c-{uuid.uuid4().hex[:6]}")
    headers = {"Idempotency-Key": f"cancelled-{uuid.uuid4().hex}"}
    body = {"model": "embedding", "input": "x"}
    with api_without_workers.client(key) as http:
        waited = http.post("/v1/embeddings", json=body, headers=headers)  # no worker: 504 at once
        assert waited.status_code == 504, waited.text
        [job] = jobs_of(api_without_workers, key)
        assert http.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
        again = http.post("/v1/embeddings", json=body, headers=headers)
    assert again.status_code == 409, again.text
    error = again.json()["error"]
    assert f"job {job['id']} was cancelled" in error["message"] and "another key" in error["message"], error
    assert error["type"] == "invalid_request_error"
