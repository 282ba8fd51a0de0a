"""``POST /v1/jobs`` is served by SubmitRoute's lean handler (producer/routes/submit_route.py);
a client must not be able to tell it from FastAPI's own. The app, on the real PostgreSQL and
Redis, gets a second route with the same endpoint served by FastAPI's handler, and every
request here goes to both: the same status, headers and body, errors included, and the same
OpenAPI operation."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import Depends, FastAPI, Request
from fastapi.testclient import TestClient

from jobs.settings import Settings
from producer.app import create_app
from producer.deps import get_state
from producer.errors import responses
from producer.routes import submit_route
from producer.routes.jobs import submit_job
from producer.routes.submit_route import SubmitRoute
from producer.schemas import JobView
from tests.conftest import create_key
from tests.services import Services, fresh_redis_db

PLAIN = "/v1/jobs-by-fastapi"  # the same endpoint, FastAPI's handler
JOB = {"kind": "text-classification", "input": {"text": "hi"}}
JSON = {"Content-Type": "application/json"}
RAW = b'{"kind": "text-classification", "input": {"text": "hi"}}'
CASES: list[tuple[str, dict[str, Any]]] = [
    ("accepted", {"json": JOB}),
    ("wait 0", {"json": JOB, "params": {"wait": "0"}}),
    ("wait below 0", {"json": JOB, "params": {"wait": "-1"}}),
    ("wait not a number", {"json": JOB, "params": {"wait": "soon"}}),
    ("wait over max_wait_s", {"json": JOB, "params": {"wait": "100000"}}),
    ("wait twice, the last counts", {"json": JOB, "params": [("wait", "soon"), ("wait", "0")]}),
    ("wait nan", {"json": JOB, "params": {"wait": "nan"}}),
    ("key too long", {"json": JOB, "headers": {"Idempotency-Key": "k" * 256}}),
    ("key empty", {"json": JOB, "headers": {"Idempotency-Key": ""}}),
    ("three wrongs", {"json": {"kind": 5}, "params": {"wait": "-1"}, "headers": {"Idempotency-Key": "k" * 300}}),
    ("no body", {"content": b"", "headers": JSON}),
    ("no content type", {"content": RAW}),
    ("text/plain", {"content": b'{"kind": "x"}', "headers": {"Content-Type": "text/plain"}}),
    ("+json", {"content": RAW, "headers": {"Content-Type": "application/vnd.x+json"}}),
    ("charset", {"content": RAW, "headers": {"Content-Type": "Application/JSON; charset=utf-8"}}),
    ("broken JSON", {"content": b'{"kind": ', "headers": JSON}),
    ("not UTF-8", {"content": b"\xff", "headers": JSON}),
    ("NUL", {"content": b"\x00", "headers": JSON}),
    ("a list", {"json": [1, 2]}),
    ("JSON null", {"content": b"null", "headers": JSON}),
    ("nested too deep", {"content": b"[" * 100_000, "headers": JSON}),
    ("two slashes", {"content": RAW, "headers": {"Content-Type": "application/x/y+json"}}),
    ("unknown field", {"json": {**JOB, "x": 1}}),
    ("unknown kind", {"json": {**JOB, "kind": "nope"}}),
    ("bad input", {"json": {**JOB, "input": {"text": 5}}}),
    ("priority over 9", {"json": {**JOB, "priority": 99}}),
    ("webhook not http", {"json": {**JOB, "webhook_url": "ftp://x"}}),
    ("NUL in metadata", {"json": {**JOB, "metadata": {"a": "\u0000"}}}),
    ("no key", {"json": JOB, "headers": {"Authorization": ""}}),
    ("unknown key", {"json": JOB, "headers": {"Authorization": "Bearer nope"}}),
]  # fmt: skip
IDS = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
TIMES = re.compile(r"\d{4}-\d\d-\d\dT[0-9:.+Z-]+")


@pytest.fixture(scope="module")
def app(settings: Settings, services: Services) -> Iterator[FastAPI]:
    """The API on a Redis database no worker reads (its jobs stay queued), with PLAIN beside it."""
    with fresh_redis_db(services.redis_base_url) as redis_url:
        app = create_app(Settings(**{**settings.model_dump(), "redis_url": redis_url}))
        app.router.add_api_route(
            PLAIN,
            submit_job,
            methods=["POST"],
            status_code=202,
            response_model=JobView,
            responses=responses(400, 409, 413, 429),
            tags=["jobs"],
        )
        yield app


@pytest.fixture(scope="module")
def client(app: FastAPI, settings: Settings) -> Iterator[TestClient]:
    key = create_key(settings, f"lean-{uuid.uuid4().hex[:6]}")
    with TestClient(app, headers={"Authorization": f"Bearer {key}"}) as client:
        yield client


@pytest.fixture
def lean_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The requests SubmitRoute's handler read: proof that it, not FastAPI's, served them."""
    read: list[str] = []
    real = submit_route.read_body

    async def counted(request: Request) -> Any:
        read.append(request.url.path)
        return await real(request)

    monkeypatch.setattr(submit_route, "read_body", counted)
    return read


def seen(answer: Any, *replace: str) -> tuple[int, str, dict[str, str]]:
    text = TIMES.sub("<time>", IDS.sub("<id>", answer.text))
    for word in replace:
        text = text.replace(word, "<word>")
    headers = {k: v for k, v in answer.headers.items() if k not in ("date", "content-length")}
    return answer.status_code, text, headers


@pytest.mark.parametrize(("case", "request_"), CASES, ids=[c for c, _ in CASES])
def test_each_answer_is_fastapis(
    client: TestClient, lean_calls: list[str], case: str, request_: dict[str, Any]
) -> None:
    plain = seen(client.post(PLAIN, **request_))
    lean = seen(client.post("/v1/jobs", **request_))
    assert lean == plain, case
    assert len(lean_calls) == (case not in ("no key", "unknown key"))  # those the gate refuses first


def test_an_idempotency_key_replays_and_conflicts_alike(client: TestClient, lean_calls: list[str]) -> None:
    answers: dict[str, list[tuple[int, str, dict[str, str]]]] = {}
    for path in (PLAIN, "/v1/jobs"):
        word = f"same-{uuid.uuid4().hex}"  # each route its own key: the second would replay the first's job
        headers = {"Idempotency-Key": word}
        first, again = (client.post(path, json=JOB, headers=headers) for _ in range(2))
        other = client.post(path, json={**JOB, "input": {"text": "other"}}, headers=headers)
        assert first.json()["id"] == again.json()["id"] and again.headers["Idempotent-Replayed"] == "true"
        answers[path] = [seen(a, word) for a in (first, again, other)]
    assert answers["/v1/jobs"] == answers[PLAIN]
    assert [status for status, _, _ in answers[PLAIN]] == [202, 202, 409]
    assert len(lean_calls) == 3


def test_the_scopes_are_checked_alike(client: TestClient, settings: Settings, lean_calls: list[str]) -> None:
    reader = create_key(settings, f"reader-{uuid.uuid4().hex[:6]}", scopes="read")
    submitter = create_key(settings, f"submitter-{uuid.uuid4().hex[:6]}", scopes="submit")
    for key, params, status in ((reader, {}, 403), (submitter, {"wait": "1"}, 403), (submitter, {}, 202)):
        headers = {"Authorization": f"Bearer {key}"}
        plain, lean = (seen(client.post(p, json=JOB, params=params, headers=headers)) for p in (PLAIN, "/v1/jobs"))
        assert lean == plain and lean[0] == status, (params, lean)
    assert len(lean_calls) == 3


def test_the_openapi_operation_is_fastapis(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    lean, plain = paths["/v1/jobs"]["post"], paths[PLAIN]["post"]
    named = ("operationId",)  # after the path
    assert {k: v for k, v in lean.items() if k not in named} == {k: v for k, v in plain.items() if k not in named}
    assert [p["name"] for p in lean["parameters"]] == ["wait", "idempotency-key"]
    assert lean["security"] == [{"HTTPBearer": []}] and "requestBody" in lean


def test_a_parameter_it_does_not_read_is_refused_at_import() -> None:
    async def submit_job(
        body: JobView, state: int, principal: int, response: int, idempotency_key: str, wait: float, more: int
    ) -> None: ...

    with pytest.raises(TypeError, match="more"):
        SubmitRoute("/v1/jobs", submit_job, methods=["POST"])


def test_a_dependency_it_does_not_solve_is_refused_at_import() -> None:
    with pytest.raises(TypeError, match="dependencies"):
        SubmitRoute("/v1/jobs", submit_job, methods=["POST"], dependencies=[Depends(get_state)])
