"""Webhooks: signed with the tenant's secret, retried after a failure, recorded, and never sent
by a worker."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from jobs import webhooks
from jobs.settings import Settings
from producer.webhooks import verify
from tests.conftest import MLQ, Api, create_key, process_env


class Receiver:
    """A local endpoint that answers the first ``fail_first`` requests with 500."""

    def __init__(self, *, fail_first: int) -> None:
        self.calls: list[tuple[dict[str, str], bytes, int]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                code = 500 if len(receiver.calls) < fail_first else 200
                receiver.calls.append((dict(self.headers), body, code))
                self.send_response(code)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, n: int, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.calls) < n:
            assert time.monotonic() < deadline, f"{len(self.calls)} calls, wanted {n}"
            time.sleep(0.05)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver(fail_first=1)
    yield made
    made.server.shutdown()


def secret_of(settings: Settings, tenant: str) -> str:
    out = subprocess.run(
        [MLQ, "keys", "webhook-secret", "--tenant", tenant],
        env=process_env(settings),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return out.stdout.strip()


def test_job_webhook_is_signed_retried_after_500_and_recorded(
    stack: Api, receiver: Receiver, sessions: sessionmaker[Session]
) -> None:
    tenant = f"hooks-{uuid.uuid4().hex[:6]}"
    key, secret = create_key(stack.settings, tenant), None
    secret = secret_of(stack.settings, tenant)
    with stack.client(key) as http:
        job = http.post(
            "/v1/jobs", json={"kind": "embedding", "input": {"text": "call me"}, "webhook_url": receiver.url}
        ).json()
        assert http.get(f"/v1/jobs/{job['id']}", params={"wait": 60}).json()["status"] == "succeeded"
    receiver.wait_for(2)
    (first_headers, first_body, first_code), (headers, body, code) = receiver.calls[:2]
    assert (first_code, code) == (500, 200)
    assert verify(secret, body, headers["Mlq-Signature"]) and verify(secret, first_body, first_headers["Mlq-Signature"])
    assert not verify(secret, body + b" ", headers["Mlq-Signature"])  # a changed body fails the check
    assert not verify("wrong-secret", body, headers["Mlq-Signature"])
    payload = json.loads(body)
    assert payload["event"] == "job.finished" and payload["job"]["id"] == job["id"]
    assert payload["job"]["status"] == "succeeded" and len(payload["job"]["output"]["embedding"]) == 384
    time.sleep(0.5)
    with sessions() as session:
        assert webhooks.deliveries_of(session, job_ids=[uuid.UUID(job["id"])]) == [("delivered", 2, 200)]
    assert len(receiver.calls) == 2  # delivered once: no more calls


def test_batch_webhook_fires_once_when_the_last_item_finishes(stack: Api, receiver: Receiver) -> None:
    tenant = f"hooks-{uuid.uuid4().hex[:6]}"
    key = create_key(stack.settings, tenant)
    secret = secret_of(stack.settings, tenant)
    items = [{"custom_id": f"i{i}", "input": {"text": f"item {i}"}} for i in range(40)]
    with stack.client(key) as http:
        batch = http.post("/v1/batches", json={"kind": "embedding", "items": items, "webhook_url": receiver.url}).json()
    receiver.wait_for(2)
    time.sleep(1.0)
    assert len(receiver.calls) == 2  # one 500, then one success; never a second event
    headers, body, _ = receiver.calls[1]
    payload = json.loads(body)
    assert verify(secret, body, headers["Mlq-Signature"])
    assert payload["event"] == "batch.finished" and payload["batch"]["id"] == batch["id"]
    assert payload["batch"]["status"] == "completed" and payload["batch"]["counts"]["succeeded"] == 40


def test_webhook_to_a_private_address_is_refused_at_submission(stack: Api, key: str) -> None:
    with stack.client(key) as http:
        for url in ("http://10.0.0.1/hook", "http://169.254.169.254/latest", "file:///etc/passwd"):
            answer = http.post("/v1/jobs", json={"kind": "embedding", "input": {"text": "x"}, "webhook_url": url})
            assert answer.status_code == 422 and answer.json()["detail"][0]["loc"] == ["body", "webhook_url"]
        batch = http.post(
            "/v1/batches",
            json={
                "kind": "embedding",
                "webhook_url": "http://10.0.0.1/",
                "items": [{"custom_id": "a", "input": {"text": "x"}}],
            },
        )
        assert batch.status_code == 422
