"""Bulk runs end to end: JSONL in, progress, JSONL results out, cancel, priority."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from jobs.tables import Batch, Job
from tests.conftest import Api, create_key

TEXTS = [
    "I will hurt you if you come here again",
    "the team won the championship",
    "buy now, click this link",
    "you are stupid and worthless",
    "the weather is nice today",
]


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def wait_batch(http: httpx.Client, batch_id: str, *, until: tuple[str, ...], timeout_s: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        batch: dict[str, Any] = http.get(f"/v1/batches/{batch_id}").json()
        if batch["status"] in until:
            return batch
        time.sleep(0.2)
    raise AssertionError(f"batch {batch_id} still {batch}")


def results(http: httpx.Client, batch_id: str, **params: str) -> list[dict[str, Any]]:
    response = http.get(f"/v1/batches/{batch_id}/results", params=params)
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in response.text.splitlines()]


@pytest.fixture
def http(stack: Api) -> httpx.Client:
    return stack.client(create_key(stack.settings, f"bulk-{uuid.uuid4().hex[:6]}"))


def test_thousand_item_moderation_batch_completes_with_every_custom_id_once(http: httpx.Client) -> None:
    lines = [{"custom_id": f"post-{i}", "input": {"text": TEXTS[i % len(TEXTS)]}} for i in range(1000)]
    created = http.post(
        "/v1/batches",
        files={"file": ("posts.jsonl", jsonl(lines))},
        data={"kind": "moderation", "metadata": '{"day": "2026-11-28"}'},
    )
    assert created.status_code == 202, created.text
    batch = created.json()
    assert batch["counts"]["total"] == 1000 and batch["kind"] == "moderation" and batch["priority"] < 5
    done = wait_batch(http, batch["id"], until=("completed", "failed"))
    assert done["status"] == "completed" and done["counts"]["succeeded"] == 1000
    assert done["metadata"] == {"day": "2026-11-28"}
    out = results(http, batch["id"])
    assert [r["custom_id"] for r in out] == [f"post-{i}" for i in range(1000)]  # each once, in input order
    assert all(r["status"] == "succeeded" and "flagged" in r["output"] for r in out)
    assert out[0]["output"]["flagged"] and not out[1]["output"]["flagged"]
    assert results(http, batch["id"], status="failed") == []
    listed = http.get("/v1/batches").json()["data"]
    assert listed[0]["id"] == batch["id"]


def test_one_bad_line_refuses_the_whole_batch_and_stores_nothing(
    api_without_workers: Api, key: str, sessions: sessionmaker[Session]
) -> None:
    lines = [{"custom_id": f"c{i}", "input": {"text": "fine"}} for i in range(100)]
    lines[41] = {"custom_id": "c41", "input": {"txt": "typo"}}
    lines[70] = {"custom_id": "c3", "input": {"text": "duplicate id"}}
    lines[80] = {"custom_id": "c80", "input": {"text": "a NUL \u0000 character"}}  # PostgreSQL stores none
    client = redis.Redis.from_url(api_without_workers.settings.require_redis_url())

    def stored() -> tuple[int, int]:
        with sessions() as session:
            return (
                session.execute(select(func.count()).select_from(Batch)).scalar_one(),
                session.execute(select(func.count()).select_from(Job)).scalar_one(),
            )

    before, queued_before = stored(), sum(client.llen(k) for k in client.keys("mlq.*"))
    with api_without_workers.client(key) as http:
        refused = http.post(
            "/v1/batches?kind=moderation", content=jsonl(lines), headers={"Content-Type": "application/jsonl"}
        )
        assert refused.status_code == 422, refused.text
        errors = refused.json()["detail"]["errors"]
        assert [(e["line"], e["custom_id"]) for e in errors] == [(42, "c41"), (71, "c3"), (81, "c80")]
        assert errors[0]["loc"] == ["input", "txt"] and "duplicate" in errors[1]["msg"]
        assert errors[2]["loc"] == ["input", "text"] and "NUL" in errors[2]["msg"]
        too_many = http.post(
            "/v1/batches?kind=moderation",
            headers={"Content-Type": "application/jsonl"},
            content=jsonl([{"custom_id": str(i), "input": {"text": "x"}} for i in range(5001)]),
        )
        assert too_many.status_code == 422 and "batch_max_lines=5000" in too_many.text
        no_kind = http.post("/v1/batches", json={"items": [{"custom_id": "a", "input": {"text": "x"}}]})
        assert no_kind.status_code == 422 and no_kind.json()["detail"]["errors"][0]["loc"] == ["kind"]
        assert (
            http.post("/v1/batches", json={"kind": "moderation", "items": lines[:2], "priority": 9}).status_code == 422
        )
        assert stored() == before and sum(client.llen(k) for k in client.keys("mlq.*")) == queued_before
        ok = http.post("/v1/batches", json={"kind": "moderation", "items": lines[:5]})
        assert ok.status_code == 202, ok.text
    assert stored() == (before[0] + 1, before[1] + 5)
    assert sum(client.llen(k) for k in client.keys("mlq.*")) == queued_before + 1  # five ids, one chunk message


def test_a_large_jsonl_body_is_spooled_and_an_oversized_one_refused(
    api_without_workers: Api, key: str, sessions: sessionmaker[Session]
) -> None:
    padding = "x" * 400
    body = jsonl([{"custom_id": f"big-{i}", "input": {"text": f"{i} {padding}"}} for i in range(4000)])
    assert 1 << 20 < len(body) < 3 << 20  # past the in-memory part of the spool, under batch_max_bytes
    with api_without_workers.client(key) as http:
        accepted = http.post("/v1/batches?kind=moderation", content=body, headers={"Content-Type": "application/jsonl"})
        assert accepted.status_code == 202, accepted.text
        assert accepted.json()["counts"]["total"] == 4000
        oversized = http.post(
            "/v1/batches?kind=moderation", content=body + body, headers={"Content-Type": "application/jsonl"}
        )
        assert oversized.status_code == 413, oversized.text[:300]
        assert "batch_max_bytes=3145728" in oversized.text
    with sessions() as session:
        stored = session.execute(select(func.count()).select_from(Job).where(Job.custom_id.like("big-%"))).scalar_one()
    assert stored == 4000  # the accepted run, and nothing of the refused one


def test_cancel_mid_run_leaves_nothing_running_and_the_counts_add_up(http: httpx.Client) -> None:
    lines = [
        {"custom_id": f"e{i}", "input": {"text": f"sentence number {i} about cats and markets"}} for i in range(3000)
    ]
    batch = http.post("/v1/batches", json={"kind": "embedding", "items": lines}).json()
    wait_batch(http, batch["id"], until=("in_progress",))
    deadline = time.monotonic() + 120
    while http.get(f"/v1/batches/{batch['id']}").json()["counts"]["succeeded"] < 50:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    partial = results(http, batch["id"])  # results stream while the batch runs
    assert len(partial) == 3000 and {r["status"] for r in partial} >= {"succeeded", "queued"}
    cancelled = http.post(f"/v1/batches/{batch['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] in ("cancelling", "cancelled")
    done = wait_batch(http, batch["id"], until=("cancelled",))
    counts = done["counts"]
    assert counts["running"] == 0 and counts["queued"] == 0 and counts["cancelled"] > 0
    assert counts["succeeded"] + counts["failed"] + counts["cancelled"] == counts["total"] == 3000
    finished = results(http, batch["id"], status="succeeded")
    assert len(finished) == counts["succeeded"] and all(len(r["output"]["embedding"]) == 384 for r in finished)


def test_interactive_job_overtakes_a_running_batch_of_the_same_kind(http: httpx.Client) -> None:
    lines = [
        {"custom_id": f"p{i}", "input": {"text": f"a longer sentence to embed, number {i}, " * 3}} for i in range(3000)
    ]
    batch = http.post("/v1/batches", json={"kind": "embedding", "items": lines}).json()
    wait_batch(http, batch["id"], until=("in_progress",))
    time.sleep(1.0)  # the worker is busy with the batch's chunks
    job = http.post("/v1/jobs", json={"kind": "embedding", "input": {"text": "urgent"}}).json()
    done = http.get(f"/v1/jobs/{job['id']}", params={"wait": 60}).json()
    progress = http.get(f"/v1/batches/{batch['id']}").json()
    assert done["status"] == "succeeded"
    assert progress["status"] == "in_progress" and progress["counts"]["queued"] > 1000, progress["counts"]
    http.post(f"/v1/batches/{batch['id']}/cancel")
    wait_batch(http, batch["id"], until=("cancelled",))


def test_another_tenant_cannot_see_a_batch(stack: Api, key: str, other_key: str) -> None:
    with stack.client(key) as mine:
        batch = mine.post(
            "/v1/batches", json={"kind": "embedding", "items": [{"custom_id": "x", "input": {"text": "mine"}}]}
        ).json()
    with stack.client(other_key) as theirs:
        for path in ("", "/results"):
            assert theirs.get(f"/v1/batches/{batch['id']}{path}").status_code == 404
        assert theirs.post(f"/v1/batches/{batch['id']}/cancel").status_code == 404
