"""Fuzz the submission endpoints with schemathesis against the API's own OpenAPI schema:
valid and invalid bodies, a few hundred cases in all, and never a 5xx."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Api

SUBMISSION = r"^/v1/(jobs|jobs/upload|batches)$"
CASES_PER_MODE = 150


@pytest.fixture(scope="module")
def operations(api_without_workers: Api) -> list[schemathesis.APIOperation]:
    schema = schemathesis.openapi.from_url(f"{api_without_workers.url}/openapi.json")
    found = [result.ok() for result in schema.include(method="POST", path_regex=SUBMISSION).get_all_operations()]
    assert sorted(op.path for op in found) == ["/v1/batches", "/v1/jobs", "/v1/jobs/upload"]
    return found


@pytest.fixture(scope="module")
def statuses() -> Iterator[Counter[int]]:
    seen: Counter[int] = Counter()
    yield seen
    print(f"fuzzed submission: {sum(seen.values())} requests, statuses {dict(sorted(seen.items()))}")


@pytest.mark.parametrize("mode", list(schemathesis.GenerationMode), ids=lambda m: m.value)
def test_submission_never_answers_5xx(
    api_without_workers: Api,
    key: str,
    operations: list[schemathesis.APIOperation],
    statuses: Counter[int],
    mode: schemathesis.GenerationMode,
) -> None:
    auth = {"Authorization": f"Bearer {key}"}

    @settings(
        max_examples=CASES_PER_MODE,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(data=st.data())
    def fuzz(data: st.DataObject) -> None:
        operation = data.draw(st.sampled_from(operations))
        case = data.draw(operation.as_strategy(generation_mode=mode))
        response = case.call(base_url=api_without_workers.url, headers=auth, timeout=30)
        statuses[response.status_code] += 1
        assert response.status_code < 500, f"{case.as_curl_command()} -> {response.status_code} {response.text[:300]}"

    fuzz()
    assert sum(statuses.values()) >= CASES_PER_MODE  # the cases really ran


@pytest.mark.parametrize("path", ["/v1/batches", "/v1/jobs"])
@pytest.mark.parametrize("body", [b"\xff", "\ufffd".encode(), b"{", b'{"items": "x"}', b"\x00"])
def test_a_broken_json_body_is_a_4xx(api_without_workers: Api, key: str, path: str, body: bytes) -> None:
    """Found by the fuzzer: a bulk body that is not UTF-8 JSON once answered 500."""
    import httpx

    answer = httpx.post(
        f"{api_without_workers.url}{path}",
        content=body,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        timeout=30,
    )
    assert 400 <= answer.status_code < 500, (answer.status_code, answer.text)
