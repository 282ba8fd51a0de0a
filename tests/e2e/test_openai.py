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
