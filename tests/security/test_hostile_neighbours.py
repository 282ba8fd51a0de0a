"""What one caller can do to others through a real ``mlq api`` and real workers (issue #14):
slow URLs, files served back, keys without the read scope, messages on the wrong queue,
bulk runs sent twice or cancelled after they finished, and webhooks that cannot be built."""

from __future__ import annotations

import http.server
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import httpx
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from jobs.queues import queue_name, task_name
from jobs.settings import Settings
from jobs.tables import Batch, Job
from producer.publish import Publisher
from tests.conftest import Api, Proc, create_key, process_env, sessions_of, stack_of_its_own, start_api
from tests.e2e.test_batches import jsonl, wait_batch
from tests.services import Services

WAIT_S = 180


class Slow(http.server.BaseHTTPRequestHandler):
    """Files for URL inputs: ``/slow`` sends a byte every half second, ``/page`` is HTML."""

    stop: ClassVar[threading.Event] = threading.Event()

    def do_GET(self) -> None:
        if self.path == "/page":
            body = b"<html><script>alert(document.cookie)</script></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", "1000000")
        self.end_headers()
        while not self.stop.wait(0.5):
            try:
                self.wfile.write(b"x")
                self.wfile.flush()
            except OSError:
                return

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def files() -> Iterator[str]:
    Slow.stop.clear()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    Slow.stop.set()
    server.shutdown()


@pytest.fixture(scope="module")
def quick_fetch_api(settings: Settings) -> Iterator[Api]:
    """URL inputs time out after 2 s a read, 6 s in all."""
    api, proc = start_api(Settings(**{**settings.model_dump(), "input_fetch_timeout_s": 2.0}), "api-slow-urls")
    try:
        yield api
    finally:
        proc.stop()


def test_a_flood_of_slow_urls_from_one_tenant_holds_nothing_another_tenant_needs(
    quick_fetch_api: Api, files: str
) -> None:
    flooder = create_key(quick_fetch_api.settings, f"flooder-{uuid.uuid4().hex[:6]}")
    neighbour = create_key(quick_fetch_api.settings, f"neighbour-{uuid.uuid4().hex[:6]}")
    job = {"kind": "image-classification", "input": {"image": {"url": f"{files}/slow"}}}

    def flood(_: int) -> int:
        with quick_fetch_api.client(flooder) as http:
            return http.post("/v1/jobs", json=job).status_code

    with ThreadPoolExecutor(64) as pool:
        flooded = [pool.submit(flood, i) for i in range(64)]
        time.sleep(1.0)  # the flood's downloads are in flight
        waited: list[float] = []
        with quick_fetch_api.client(neighbour) as http:
            for path in ("/healthz", "/readyz", "/v1/models", "/v1/jobs") * 3:
                started = time.monotonic()
                assert http.get(path).status_code == 200, path
                waited.append(time.monotonic() - started)
            for _ in range(10):
                started = time.monotonic()
                assert http.post("/v1/jobs", json={"kind": "embedding", "input": {"text": "hi"}}).status_code == 202
                waited.append(time.monotonic() - started)
        assert not all(f.done() for f in flooded), "the flood was over before the neighbour was served"
        statuses = [f.result() for f in flooded]
    assert max(waited) < 3.0, waited  # the flood holds each of its 8 downloads for 6 s
    assert statuses.count(429) >= 64 - quick_fetch_api.settings.input_fetches_per_tenant, statuses
    assert set(statuses) <= {429, 422}, statuses  # the downloads it let through timed out


def test_a_url_input_served_as_html_comes_back_as_a_download(api_without_workers: Api, key: str, files: str) -> None:
    with api_without_workers.client(key) as http:
        job = http.post("/v1/jobs", json={"kind": "image-classification", "input": {"image": {"url": f"{files}/page"}}})
        assert job.status_code == 202, job.text
        served = http.get(f"/v1/jobs/{job.json()['id']}/artifacts/input-image")
    assert served.status_code == 200 and b"<script>" in served.content
    assert served.headers["content-type"] == "application/octet-stream"
    assert served.headers["content-disposition"].startswith("attachment")
    assert served.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in served.headers["content-security-policy"]


def test_a_key_without_the_read_scope_never_sees_a_result(stack: Api) -> None:
    tenant = f"scoped-{uuid.uuid4().hex[:6]}"
    reader, submitter = create_key(stack.settings, tenant), create_key(stack.settings, tenant, scopes="submit")
    job = {"kind": "embedding", "input": {"text": "secret result"}}
    headers = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
    with stack.client(reader) as http:
        done = http.post("/v1/jobs", json=job, headers=headers, params={"wait": WAIT_S}).json()
    assert done["status"] == "succeeded" and done["output"]
    with stack.client(submitter) as http:
        replay = http.post("/v1/jobs", json=job, headers=headers)
        assert replay.status_code == 202 and replay.headers["idempotent-replayed"] == "true"
        assert replay.json()["id"] == done["id"] and replay.json()["output"] is None
        assert replay.json()["error"] is None and replay.json()["history"] == []
        waiting = http.post("/v1/jobs", json=job, params={"wait": 5})
        assert waiting.status_code == 403 and "read" in waiting.json()["detail"]


@pytest.fixture(scope="module")
def lone_worker(settings: Settings, services: Services) -> Iterator[tuple[Api, Proc]]:
    """An API and a worker serving text-classification alone, on a stack of their own."""
    with stack_of_its_own(settings, services) as own:
        worker = Proc("worker-one-kind", ["worker", "--kinds", "text-classification"], process_env(own))
        api, proc = start_api(own, "api-one-kind")
        try:
            yield api, worker
        finally:
            proc.stop()
            worker.stop()


def test_a_message_for_a_kind_the_worker_does_not_serve_loads_nothing(lone_worker: tuple[Api, Proc]) -> None:
    api, worker = lone_worker
    key = create_key(api.settings, f"routing-{uuid.uuid4().hex[:6]}")
    with api.client(key) as http:
        ours = http.post("/v1/jobs", json={"kind": "text-classification", "input": {"text": "x"}}, params={"wait": 120})
        assert ours.json()["status"] == "succeeded"  # the worker is up and serving its kind
        foreign = http.post("/v1/jobs", json={"kind": "image-generation", "input": {"prompt": "a dog"}}).json()
    publisher = Publisher(api.settings)
    publisher.app.send_task(
        task_name("image-generation"), args=[[foreign["id"]]], queue=queue_name("text-classification")
    )
    publisher.close()
    deadline = time.monotonic() + 60
    while "left queued" not in worker.log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    log = worker.log_path.read_text()
    assert "left queued" in log and foreign["id"] in log, worker.tail()
    assert "loaded text-classification model" in log and "loaded image-generation model" not in log
    with sessions_of(api.settings) as sessions, sessions() as session:
        assert session.get(Job, uuid.UUID(foreign["id"])).status == "queued"  # type: ignore[union-attr]
    with api.client(key) as http:  # and the worker goes on with its own kind
        after = http.post("/v1/jobs", json={"kind": "text-classification", "input": {"text": "y"}}, params={"wait": 60})
        assert after.json()["status"] == "succeeded"


def test_a_bulk_run_sent_again_with_its_idempotency_key_is_stored_once(
    api_without_workers: Api, key: str, sessions: sessionmaker[Session]
) -> None:
    lines = [{"custom_id": f"c{i}", "input": {"text": f"line {i}"}} for i in range(50)]
    same = {"Idempotency-Key": f"run-{uuid.uuid4()}", "Content-Type": "application/jsonl"}
    with api_without_workers.client(key) as http:

        def send(_: int) -> httpx.Response:
            return http.post("/v1/batches?kind=moderation", content=jsonl(lines), headers=same)

        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(send, range(4)))
        ids = {a.json()["id"] for a in answers}
        assert len(ids) == 1, [a.text for a in answers]
        assert sorted(a.status_code for a in answers) == [200, 200, 200, 202]
        assert sum(a.headers.get("idempotent-replayed") == "true" for a in answers) == 3
        as_json = http.post(
            "/v1/batches",
            json={"kind": "moderation", "items": lines},
            headers={"Idempotency-Key": same["Idempotency-Key"]},
        )
        assert as_json.status_code == 200 and as_json.json()["id"] in ids
        other = http.post("/v1/batches?kind=moderation", content=jsonl(lines[:49]), headers=same)
        assert other.status_code == 409 and "Idempotency-Key" in other.json()["detail"]
    with sessions() as session:
        batch_id = uuid.UUID(ids.pop())
        assert session.execute(select(func.count()).where(Job.batch_id == batch_id)).scalar_one() == 50
        keyed = select(func.count()).select_from(Batch).where(Batch.idempotency_key == same["Idempotency-Key"])
        assert session.execute(keyed).scalar_one() == 1


def test_cancelling_a_bulk_run_that_finished_is_a_conflict(stack: Api, key: str) -> None:
    with stack.client(key) as http:
        batch = http.post(
            "/v1/batches?kind=moderation",
            content=jsonl([{"custom_id": "a", "input": {"text": "done soon"}}]),
            headers={"Content-Type": "application/jsonl"},
        ).json()
        assert wait_batch(http, batch["id"], until=("completed", "failed"))["status"] == "completed"
        refused = http.post(f"/v1/batches/{batch['id']}/cancel")
        assert refused.status_code == 409 and "already finished" in refused.json()["detail"]
        after = http.get(f"/v1/batches/{batch['id']}").json()
    assert after["status"] == "completed" and after["cancel_requested_at"] is None


def delivery_outcome(sessions: sessionmaker[Session], delivery_id: uuid.UUID) -> Any:
    """The delivery's row once its first attempt is recorded (or after 30 s)."""
    deadline = time.monotonic() + 30
    while True:
        with sessions() as session:
            row = session.execute(
                text("SELECT status, attempts, last_error FROM webhook_deliveries WHERE id = :d"), {"d": delivery_id}
            ).one()
        if row.status != "pending" or row.last_error is not None or time.monotonic() > deadline:
            return row
        time.sleep(0.2)


def test_a_webhook_whose_body_cannot_be_built_is_marked_failed_not_retried_forever(
    stack: Api, key: str, sessions: sessionmaker[Session]
) -> None:
    """A job whose stored output is not an object (a row written by hand) cannot be shown: its
    delivery fails once, for good, and the other deliveries go on. A bulk run stored with
    metadata that is not an object (as multipart runs once could) reads back under ``value``."""
    with stack.client(key) as http:
        job = http.post("/v1/jobs?wait=120", json={"kind": "embedding", "input": {"text": "t"}}).json()
    assert job["status"] == "succeeded", job
    job_id, batch_id, job_hook, batch_hook = uuid.UUID(job["id"]), uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    with sessions.begin() as session:
        tenant_id = session.execute(select(Job.tenant_id).where(Job.id == job_id)).scalar_one()
        values = {"id": batch_id, "t": tenant_id, "job": job_id, "jd": job_hook, "bd": batch_hook}
        session.execute(text("UPDATE jobs SET output = '\"not an object\"' WHERE id = :job"), values)
        session.execute(
            text("INSERT INTO batches (id, tenant_id, total, priority, metadata) VALUES (:id, :t, 0, 2, '[1]')"), values
        )
        session.execute(
            text(
                "INSERT INTO webhook_deliveries (id, tenant_id, job_id, batch_id, url, status, attempts) VALUES "
                "(:jd, :t, :job, NULL, 'http://127.0.0.1:9/', 'pending', 0), "
                "(:bd, :t, NULL, :id, 'http://127.0.0.1:9/', 'pending', 0)"
            ),
            values,
        )
    try:
        unbuildable, odd_metadata = delivery_outcome(sessions, job_hook), delivery_outcome(sessions, batch_hook)
        with stack.client(key) as http:
            shown = http.get(f"/v1/batches/{batch_id}")
    finally:
        with sessions.begin() as session:  # rows the API can no longer store: leave none for later tests' pages
            session.execute(text("DELETE FROM jobs WHERE id = :job"), {"job": job_id})
            session.execute(text("DELETE FROM batches WHERE id = :id"), {"id": batch_id})
    assert unbuildable.status == "failed" and unbuildable.attempts == 1, unbuildable
    assert "cannot be built" in unbuildable.last_error, unbuildable
    # the run's body was built and sent (port 9 refuses it: a retry is due, not a final failure)
    assert odd_metadata.attempts >= 1 and "cannot be built" not in (odd_metadata.last_error or ""), odd_metadata
    assert shown.status_code == 200 and shown.json()["metadata"] == {"value": [1]}, shown.text


class Receiver(http.server.BaseHTTPRequestHandler):
    """A webhook receiver: ``/slow`` answers after 4 s, ``/fast`` at once; both record the path."""

    seen: ClassVar[list[tuple[str, float]]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path == "/slow":
            time.sleep(4)
        self.seen.append((self.path, time.monotonic()))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_a_slow_webhook_receiver_holds_no_other_tenants_deliveries(
    api_without_workers: Api, key: str, other_key: str, sessions: sessionmaker[Session]
) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    rows = []
    for who, path, count in ((key, "/slow", 8), (other_key, "/fast", 1)):
        with api_without_workers.client(who) as http_:
            for _ in range(count):
                job = http_.post("/v1/jobs", json={"kind": "embedding", "input": {"text": "w"}}).json()
                rows.append((uuid.UUID(job["id"]), f"{base}{path}"))
    with sessions.begin() as session:
        for job_id, url in rows:  # as a job's finish writes them: the slow tenant's first
            session.execute(
                text(
                    "INSERT INTO webhook_deliveries (id, tenant_id, job_id, url, status, attempts) "
                    "SELECT :id, tenant_id, id, :url, 'pending', 0 FROM jobs WHERE id = :job"
                ),
                {"id": uuid.uuid4(), "url": url, "job": job_id},
            )
    inserted = time.monotonic()
    try:
        deadline = inserted + 30
        while not any(p == "/fast" for p, _ in Receiver.seen) and time.monotonic() < deadline:
            time.sleep(0.05)
        fast = [t for p, t in Receiver.seen if p == "/fast"]
        assert fast and fast[0] - inserted < 3.0, Receiver.seen  # not behind 8 x 4 s of the other tenant's
        assert sum(p == "/slow" for p, _ in Receiver.seen) == 0  # they were still in flight
    finally:
        server.shutdown()
