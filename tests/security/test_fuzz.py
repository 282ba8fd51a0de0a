"""Fuzz the API with schemathesis against its own OpenAPI document: every operation, every
check, valid and invalid data; never a 5xx, never an answer the document does not promise."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from jobs.settings import Settings
from tests.conftest import ARTIFACTS, Api, create_key

CONFIG = Path(__file__).with_name("schemathesis.toml")  # the rules the schema cannot state, and why
CASES_PER_OPERATION = int(os.environ.get("MLQ_FUZZ_CASES", "300"))  # per mode: 8,894 positive and 11,084 negative cases


# One mode's run. On a slow evening of the 2-core CI machine the positive run took 358 s and the
# negative one passed the suite's 600 s default timeout (9 of its 10 minutes with nothing beside it).
FUZZ_TIMEOUT_S = 900


@pytest.mark.timeout(FUZZ_TIMEOUT_S + 60)  # beyond the suite's 600 s: its own bound is the run's
@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_the_whole_api_keeps_its_openapi_document(api_without_workers: Api, settings: Settings, mode: str) -> None:
    """Schemathesis, every check, every operation, valid (positive) then invalid (negative) data,
    then the stateful phase (links between operations): no 5xx, and every answer is one the
    document promises, in status, content type, headers and body. An admin key, so the ops
    operations answer too. One run per mode, so each mode's own cases are counted: in one run
    of both, the total hid a mode that generated nothing."""
    key = create_key(settings, f"fuzz-{uuid.uuid4().hex[:6]}", scopes="submit,read,admin")
    ARTIFACTS.mkdir(exist_ok=True)
    command = [str(Path(sys.executable).with_name("schemathesis")), "--config-file", str(CONFIG), "--no-color"]
    # every check: schemathesis enables them all by default, and then tests/security/schemathesis.toml
    # can state an operation's exceptions (a `--checks all` given here would override those)
    command += ["run", f"{api_without_workers.url}/openapi.json", "--mode", mode]
    command += ["--phases", "examples,coverage,fuzzing,stateful", "--max-examples", str(CASES_PER_OPERATION)]
    command += ["--header", f"Authorization: Bearer {key}", "--report", "junit"]
    command += ["--report-junit-path", str(ARTIFACTS / f"schemathesis-junit-{mode}.xml")]
    run = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=FUZZ_TIMEOUT_S,
        cwd=ARTIFACTS,
    )
    summary = run.stdout[-3000:]
    print(summary)
    assert run.returncode == 0, summary
    generated = re.search(r"(\d+) generated, (\d+) passed", run.stdout)
    assert generated is not None and int(generated.group(1)) >= 10 * CASES_PER_OPERATION, summary  # this mode alone
    selected = re.search(r"Selected: (\d+)/(\d+)\s+Tested: (\d+)", run.stdout)
    assert selected is not None and len(set(selected.groups())) == 1, summary  # every operation, each tested


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
