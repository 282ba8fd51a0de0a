"""A job goes over HTTP through Redis and a real Celery worker into PostgreSQL."""

from __future__ import annotations

import uuid

import redis
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from jobs.tables import Job
from producer.publish import Publisher
from tests.conftest import Api

WAIT_S = 180  # the first jobs wait for the worker to build and load every demo model


def test_classification_job_succeeds(stack: Api, key: str) -> None:
    with stack.client(key) as http:
        submitted = http.post("/v1/jobs", json={"kind": "text-classification", "input": {"text": "这是一条新闻标题"}})
        assert submitted.status_code == 202, submitted.text
        job = submitted.json()
        assert job["status"] == "queued" and job["attempt"] == 0
        done = http.get(f"/v1/jobs/{job['id']}", params={"wait": WAIT_S}).json()
    assert done["status"] == "succeeded", done
    assert done["attempt"] == 1 and done["profile"] == "demo" and done["model"] == "builtin:tiny-text-classifier"
    labels = done["output"]["labels"]
    assert [x["label"] for x in labels] and done["output"]["label"] == labels[0]["label"]
    assert abs(sum(x["score"] for x in labels) - 1.0) < 1e-4
    assert labels == sorted(labels, key=lambda x: -x["score"])


def test_embedding_job_succeeds_with_a_unit_vector(stack: Api, key: str) -> None:
    with stack.client(key) as http:
        job = http.post("/v1/jobs", json={"kind": "embedding", "input": {"text": "a kitten"}}).json()
        done = http.get(f"/v1/jobs/{job['id']}", params={"wait": WAIT_S}).json()
    assert done["status"] == "succeeded", done
    vector = done["output"]["embedding"]
    assert done["output"]["dimensions"] == len(vector) == 384
    assert abs(sum(v * v for v in vector) - 1.0) < 1e-4


def test_same_idempotency_key_gives_one_job(stack: Api, key: str, sessions: sessionmaker[Session]) -> None:
    idem = f"order-{uuid.uuid4()}"
    body = {"kind": "embedding", "input": {"text": "once"}}
    with stack.client(key) as http:
        first = http.post("/v1/jobs", json=body, headers={"Idempotency-Key": idem})
        second = http.post("/v1/jobs", json=body, headers={"Idempotency-Key": idem})
        conflict = http.post("/v1/jobs", json={**body, "input": {"text": "other"}}, headers={"Idempotency-Key": idem})
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"] and second.headers["Idempotent-Replayed"] == "true"
    assert conflict.status_code == 409
    with sessions() as session:
        count = session.execute(select(func.count()).where(Job.idempotency_key == idem)).scalar_one()
    assert count == 1


def test_redelivered_message_yields_one_result(stack: Api, key: str) -> None:
    with stack.client(key) as http:
        job = http.post("/v1/jobs", json={"kind": "embedding", "input": {"text": "twice"}}).json()
        done = http.get(f"/v1/jobs/{job['id']}", params={"wait": WAIT_S}).json()
        assert done["status"] == "succeeded"
        publisher = Publisher(stack.settings)
        for _ in range(2):  # the same wake-up again, as a broker redelivery would
            assert publisher.publish(kind="embedding", job_ids=[uuid.UUID(job["id"])], priority=5)
        publisher.close()
        # a later job on the same queue finishes only after the duplicates were consumed
        marker = http.post("/v1/jobs", json={"kind": "embedding", "input": {"text": "after"}}).json()
        assert http.get(f"/v1/jobs/{marker['id']}", params={"wait": WAIT_S}).json()["status"] == "succeeded"
        again = http.get(f"/v1/jobs/{job['id']}").json()
    assert again["attempt"] == 1 and again["output"] == done["output"] and again["finished_at"] == done["finished_at"]


def test_another_tenant_gets_404(stack: Api, key: str, other_key: str) -> None:
    with stack.client(key) as mine:
        job = mine.post("/v1/jobs", json={"kind": "embedding", "input": {"text": "private"}}).json()
    with stack.client(other_key) as theirs:
        assert theirs.get(f"/v1/jobs/{job['id']}").status_code == 404
        assert theirs.post(f"/v1/jobs/{job['id']}/cancel").status_code == 404
        assert job["id"] not in {j["id"] for j in theirs.get("/v1/jobs", params={"limit": 200}).json()["data"]}
    with stack.client(key) as mine:
        assert mine.get(f"/v1/jobs/{job['id']}").status_code == 200


def test_missing_and_wrong_keys_get_401(stack: Api) -> None:
    with stack.client("mlq_000000000000_nope") as http:
        assert http.get("/v1/jobs").status_code == 401
    import httpx

    assert httpx.get(f"{stack.url}/v1/jobs").status_code == 401


def queued_messages(api: Api) -> int:
    client = redis.Redis.from_url(api.settings.require_redis_url())
    return sum(client.llen(k) for k in client.keys("mlq.*"))


def test_invalid_input_is_refused_naming_the_field_with_nothing_stored_or_published(
    api_without_workers: Api, key: str, sessions: sessionmaker[Session]
) -> None:
    def jobs_stored() -> int:
        with sessions() as session:
            return session.execute(select(func.count()).select_from(Job)).scalar_one()

    cases = [
        ({"kind": "telepathy", "input": {"text": "x"}}, ["body", "kind"], "unknown job kind"),
        ({"kind": "text-classification", "input": {}}, ["body", "input", "text"], "Field required"),
        ({"kind": "text-classification", "input": {"text": 42}}, ["body", "input", "text"], "string"),
        ({"kind": "text-classification", "input": {"text": "x" * 5000}}, ["body", "input", "text"], "max_text_chars"),
        ({"kind": "embedding", "input": {"text": "x", "top_k": 1}}, ["body", "input", "top_k"], "Extra inputs"),
        ({"kind": "embedding", "input": {"text": "x"}, "priority": 42}, ["body", "priority"], "less than"),
        ({"input": {"text": "x"}}, ["body", "kind"], "Field required"),
        # PostgreSQL stores no NUL: refused naming the field, not a 503 from the database
        ({"kind": "text-classification", "input": {"text": "a\u0000b"}}, ["body", "input", "text"], "NUL"),
        ({"kind": "embedding", "input": {"text": "x"}, "metadata": {"k": "\u0000"}}, ["body", "metadata", "k"], "NUL"),
    ]
    before_rows, before_messages = jobs_stored(), queued_messages(api_without_workers)
    with api_without_workers.client(key) as http:
        for body, loc, message in cases:
            response = http.post("/v1/jobs", json=body)
            assert response.status_code == 422, (body, response.text)
            errors = response.json()["detail"]
            assert any(e["loc"] == loc and message in e["msg"] for e in errors), (body, errors)
        assert (
            http.post("/v1/jobs", content=b"{not json", headers={"Content-Type": "application/json"}).status_code == 422
        )
        assert jobs_stored() == before_rows and queued_messages(api_without_workers) == before_messages
        # the same check sees a valid job land, so it can fail
        ok = http.post("/v1/jobs", json={"kind": "embedding", "input": {"text": "x"}})
        assert ok.status_code == 202
    assert jobs_stored() == before_rows + 1 and queued_messages(api_without_workers) == before_messages + 1


def test_an_empty_idempotency_key_is_refused_naming_it_with_nothing_stored(
    api_without_workers: Api, key: str, sessions: sessionmaker[Session]
) -> None:
    """An unset variable sent as ``Idempotency-Key: ""`` was a key: every later job of the
    tenant that sent it replayed the first and never ran."""

    def jobs_stored() -> int:
        with sessions() as session:
            return session.execute(select(func.count()).select_from(Job)).scalar_one()

    empty = {"Idempotency-Key": ""}
    line = b'{"input": {"text": "x"}}\n'
    before = jobs_stored()
    with api_without_workers.client(key) as http:
        refused = [
            http.post("/v1/jobs", json={"kind": "embedding", "input": {"text": "x"}}, headers=empty),
            http.post("/v1/batches", params={"kind": "embedding"}, content=line,
                      headers={**empty, "Content-Type": "application/jsonl"}),
            http.post("/v1/embeddings", json={"model": "embedding", "input": "x"}, headers=empty),
        ]  # fmt: skip
        assert [r.status_code for r in refused] == [422, 422, 400], [r.text for r in refused]  # 400: OpenAI's
        for answer in refused[:2]:
            assert any(e["loc"] == ["header", "idempotency-key"] for e in answer.json()["detail"]), answer.text
        assert refused[2].json()["error"]["param"] == "idempotency-key", refused[2].text
        assert jobs_stored() == before
        kept = http.post(
            "/v1/jobs", json={"kind": "embedding", "input": {"text": "x"}}, headers={"Idempotency-Key": "k"}
        )
        assert kept.status_code == 202  # the same check sees a job with a key land, so it can fail
    assert jobs_stored() == before + 1


def test_cancel_a_queued_job_and_finished_ones_conflict(api_without_workers: Api, stack: Api, key: str) -> None:
    with api_without_workers.client(key) as http:
        job = http.post("/v1/jobs", json={"kind": "embedding", "input": {"text": "never run"}}).json()
        cancelled = http.post(f"/v1/jobs/{job['id']}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        assert http.get(f"/v1/jobs/{job['id']}", params={"wait": 5}).json()["status"] == "cancelled"
    with stack.client(key) as http:
        done = http.post("/v1/jobs", json={"kind": "embedding", "input": {"text": "done"}}).json()
        assert http.get(f"/v1/jobs/{done['id']}", params={"wait": WAIT_S}).json()["status"] == "succeeded"
        assert http.post(f"/v1/jobs/{done['id']}/cancel").status_code == 409


def test_wait_returns_early_and_is_bounded(api_without_workers: Api, key: str) -> None:
    import time

    with api_without_workers.client(key) as http:
        job = http.post("/v1/jobs", json={"kind": "embedding", "input": {"text": "waiting"}}).json()
        started = time.monotonic()
        still = http.get(f"/v1/jobs/{job['id']}", params={"wait": 1.5}).json()
        assert still["status"] == "queued" and time.monotonic() - started >= 1.4
        assert http.get(f"/v1/jobs/{job['id']}", params={"wait": 10_000}).status_code == 422
        assert http.get(f"/v1/jobs/{uuid.uuid4()}").status_code == 404
        started = time.monotonic()  # the POST itself may wait; unserved here, it answers queued when time is up
        waited = http.post("/v1/jobs", params={"wait": 1}, json={"kind": "embedding", "input": {"text": "w"}})
        assert waited.status_code == 202 and waited.json()["status"] == "queued" and time.monotonic() - started >= 0.9
        too_long = http.post("/v1/jobs", params={"wait": 10_000}, json={"kind": "embedding", "input": {"text": "x"}})
        assert too_long.status_code == 422 and "max_wait_s" in too_long.text


def test_submit_and_wait_in_one_request(stack: Api, key: str) -> None:
    with stack.client(key) as http:
        done = http.post(
            "/v1/jobs", params={"wait": WAIT_S}, json={"kind": "text-classification", "input": {"text": "一条新闻"}}
        )
    assert done.status_code == 202 and done.json()["status"] == "succeeded", done.text
    assert done.json()["output"]["labels"]


def test_list_filters_and_pages(stack: Api, settings: object) -> None:
    from tests.conftest import create_key

    key = create_key(stack.settings, f"lister-{uuid.uuid4().hex[:6]}")
    with stack.client(key) as http:
        ids = [
            http.post("/v1/jobs", json={"kind": "embedding", "input": {"text": f"n{i}"}}).json()["id"] for i in range(5)
        ]
        http.post("/v1/jobs", json={"kind": "text-classification", "input": {"text": "other kind"}})
        seen, cursor = [], None
        while True:
            page = http.get(
                "/v1/jobs", params={"kind": "embedding", "limit": 2, **({"cursor": cursor} if cursor else {})}
            ).json()
            seen += [j["id"] for j in page["data"]]
            cursor = page["next_cursor"]
            if not cursor:
                break
        assert seen == list(reversed(ids))  # newest first, each once
        for job_id in ids:
            http.get(f"/v1/jobs/{job_id}", params={"wait": WAIT_S})
        done = http.get("/v1/jobs", params={"status": "succeeded", "limit": 50}).json()["data"]
        assert {j["id"] for j in done} >= set(ids)
        assert http.get("/v1/jobs", params={"status": "sleeping"}).status_code == 422
        assert http.get("/v1/jobs", params={"cursor": "bad"}).status_code == 422


def test_models_health_ready_and_docs(stack: Api, key: str) -> None:
    import httpx

    with stack.client(key) as http:
        listed = http.get("/v1/models").json()
        models = {m["kind"]: m for m in listed["data"]}
    assert listed["object"] == "list" and all(m["id"] == m["kind"] and m["object"] == "model" for m in models.values())
    assert len(models) == 11 and all(m["profile"] == "demo" for m in models.values())
    assert models["embedding"]["limits"]["max_text_chars"] > 0
    assert "text" in models["embedding"]["input_schema"]["properties"]
    assert httpx.get(f"{stack.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{stack.url}/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["postgres"] == "ok"
    assert ready.json()["checks"]["redis"] == "ok"
    assert httpx.get(f"{stack.url}/docs").status_code == 200
    spec = httpx.get(f"{stack.url}/openapi.json").json()
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/cancel", "/v1/models"} <= set(spec["paths"])


def test_the_models_files_input_defaults_fill_what_a_job_leaves_out(api_without_workers: Api, key: str) -> None:
    """The demo profile draws 128x128 in 4 steps unless asked: 512x512 in 20 took 47 s on a CPU."""
    with api_without_workers.client(key) as http:
        job = http.post("/v1/jobs", json={"kind": "image-generation", "input": {"prompt": "a dog"}}).json()
        asked = http.post(
            "/v1/jobs", json={"kind": "image-generation", "input": {"prompt": "a dog", "width": 256, "height": 256}}
        ).json()
    assert (job["input"]["width"], job["input"]["height"], job["input"]["num_inference_steps"]) == (128, 128, 4)
    assert (asked["input"]["width"], asked["input"]["num_inference_steps"]) == (256, 4)
