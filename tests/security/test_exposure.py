"""Nothing exposed by default: pickled broker messages, Flower without credentials, keys and scopes."""

from __future__ import annotations

import base64
import json
import os
import pickle
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import redis

from jobs.settings import Settings
from mlq.embedded import free_port
from tests.conftest import MLQ, Api, Proc, create_key, process_env, start_api


class Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_a_pickled_message_pushed_into_redis_is_not_run(stack: Api, key: str, tmp_path: Path) -> None:
    marker = tmp_path / "pickle-ran"
    task_id = str(uuid.uuid4())
    message = {
        "body": base64.b64encode(pickle.dumps(((Exploit(marker),), {}, {}))).decode(),
        "content-encoding": "binary",
        "content-type": "application/x-python-serialize",
        "headers": {"lang": "py", "task": "mlq.run.embedding", "id": task_id, "root_id": task_id},
        "properties": {
            "correlation_id": task_id,
            "delivery_tag": str(uuid.uuid4()),
            "body_encoding": "base64",
            "delivery_info": {"exchange": "", "routing_key": "mlq.embedding"},
            "priority": 0,
        },
    }
    redis.Redis.from_url(stack.settings.require_redis_url()).lpush("mlq.embedding", json.dumps(message))
    with stack.client(key) as http:  # the worker goes on: a job queued after it finishes
        job = http.post("/v1/jobs", json={"kind": "embedding", "input": {"text": "after the pickle"}}).json()
        assert http.get(f"/v1/jobs/{job['id']}", params={"wait": 60}).json()["status"] == "succeeded"
    time.sleep(1.0)
    assert not marker.exists()


def test_flower_refuses_to_start_without_credentials_and_answers_401_without_them(stack: Api) -> None:
    env = process_env(stack.settings)
    env.pop("MLQ_FLOWER_BASIC_AUTH", None)
    refused = subprocess.run(
        [MLQ, "flower", "--port", str(free_port())], env=env, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode != 0 and "unauthenticated" in refused.stdout + refused.stderr
    port = free_port()
    flower = Proc("flower", ["flower", "--port", str(port)], {**env, "MLQ_FLOWER_BASIC_AUTH": "ops:s3cret"})
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline and flower.alive(), flower.tail()
                time.sleep(0.2)
        assert answer.status_code == 401
        assert httpx.get(f"http://127.0.0.1:{port}/api/workers", timeout=5).status_code == 401
        for path in ("/metrics", "/healthcheck"):  # Flower's own answer these to anyone; they name workers
            assert httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5).status_code == 401, path
            assert httpx.get(f"http://127.0.0.1:{port}{path}", auth=("ops", "s3cret"), timeout=5).status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/", auth=("ops", "s3cret"), timeout=5).status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/", auth=("ops", "wrong"), timeout=5).status_code == 401
    finally:
        flower.stop()


def test_scopes_and_revoked_keys(stack: Api) -> None:
    reader = create_key(stack.settings, f"scoped-{uuid.uuid4().hex[:6]}", scopes="read")
    with stack.client(reader) as http:
        refused = http.post("/v1/jobs", json={"kind": "embedding", "input": {"text": "x"}})
        assert refused.status_code == 403 and "submit" in refused.json()["detail"]
        assert http.get("/v1/jobs").status_code == 200
    env = process_env(stack.settings)
    revoked = subprocess.run(
        [MLQ, "keys", "revoke", reader.split("_")[1]], env=env, capture_output=True, text=True, timeout=60
    )
    assert revoked.returncode == 0
    time.sleep(5.5)  # keys are cached for up to 5 s
    with stack.client(reader) as http:
        assert http.get("/v1/jobs").status_code == 401
    with stack.client("Bearer-garbage") as http:
        assert http.get("/v1/jobs").status_code == 401


def test_metrics_need_the_token_when_one_is_set(settings: Settings) -> None:
    token = "m3trics-" + uuid.uuid4().hex
    api, proc = start_api(Settings(**{**settings.model_dump(), "metrics_token": token}), "api-metrics-token")
    try:
        assert httpx.get(f"{api.url}/metrics", timeout=10).status_code == 401
        wrong = httpx.get(f"{api.url}/metrics", headers={"Authorization": "Bearer nope"}, timeout=10)
        assert wrong.status_code == 401
        right = httpx.get(f"{api.url}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert right.status_code == 200 and "mlq_queue_depth" in right.text
    finally:
        proc.stop()
