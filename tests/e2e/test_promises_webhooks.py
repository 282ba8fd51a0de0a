"""Webhooks as the README promises them, with a real worker and real API processes on a
database of their own: the delivery row is written in the transaction that finishes the job
(the API killed right after the finish, a new one still delivers), workers never send, the URL
and each redirect are checked again at delivery, and failed deliveries back off more and more.
Each test starts the API processes it needs: which of them sends, and when, is what is tested."""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from jobs.settings import Settings
from tests.conftest import Api, Proc, create_key, process_env, sessions_of, stack_of_its_own, start_api
from tests.services import Services

BASE_S = 0.4  # webhook_retry_base_s here: attempt n waits BASE_S x 2^(n-1) x 0.5-1.5


class Receiver:
    """An HTTP endpoint on ``host`` that answers each POST with ``answer(path)``: (status, headers)."""

    def __init__(self, host: str, answer: Callable[[], tuple[int, dict[str, str]]]) -> None:
        self.calls: list[tuple[float, bytes]] = []  # (monotonic time, body)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.calls.append((time.monotonic(), body))
                code, headers = answer()
                self.send_response(code)
                for name, value in {**headers, "Content-Length": "0"}.items():
                    self.send_header(name, value)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, n: int, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.calls) < n:
            assert time.monotonic() < deadline, f"{len(self.calls)} calls, wanted {n}"
            time.sleep(0.02)


Receivers = Callable[..., Receiver]
Apis = Callable[[Settings, str], tuple[Api, Proc]]


@pytest.fixture
def receivers() -> Iterator[Receivers]:
    made: list[Receiver] = []

    def make(host: str = "127.0.0.1", answer: Callable[[], tuple[int, dict[str, str]]] = lambda: (200, {})) -> Receiver:
        made.append(Receiver(host, answer))
        return made[-1]

    yield make
    for receiver in made:
        receiver.server.shutdown()


@pytest.fixture(scope="module")
def mine(settings: Settings, services: Services) -> Iterator[Settings]:
    # an idle dispatcher looks every 50 ms: when a delivery is made is what these tests read
    with stack_of_its_own(
        settings, services, allow_hosts=["127.0.0.1"], webhook_poll_s=0.05, webhook_retry_base_s=BASE_S
    ) as own:
        yield own


@pytest.fixture(scope="module")
def worker(mine: Settings) -> Iterator[Proc]:
    proc = Proc("hooks-worker", ["worker", "--kinds", "embedding"], process_env(mine))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def key(mine: Settings) -> str:
    return create_key(mine, f"hooks-{uuid.uuid4().hex[:6]}")


@pytest.fixture(scope="module")
def sessions(mine: Settings) -> Iterator[sessionmaker[Session]]:
    with sessions_of(mine) as made:
        yield made


@pytest.fixture
def apis() -> Iterator[Apis]:
    started: list[Proc] = []

    def start(settings: Settings, name: str) -> tuple[Api, Proc]:
        api, proc = start_api(settings, name)
        started.append(proc)
        return api, proc

    yield start
    for proc in started:
        proc.stop()


def submit(api: Api, key: str, hook: str, *, wait_s: float = 0) -> dict[str, Any]:
    with api.client(key) as http:
        answer = http.post(
            "/v1/jobs",
            json={"kind": "embedding", "input": {"text": "call me"}, "webhook_url": hook},
            params={"wait": wait_s} if wait_s else None,
        )
    assert answer.status_code in (200, 202), answer.text
    return dict(answer.json())


def delivery(sessions: sessionmaker[Session], job_id: str) -> Any:
    with sessions() as session:
        return session.execute(
            text("SELECT status, attempts, last_status_code, last_error FROM webhook_deliveries WHERE job_id = :id"),
            {"id": job_id},
        ).one_or_none()


def test_the_delivery_row_comes_with_the_finish_workers_never_send_and_a_new_api_delivers(
    mine: Settings, worker: Proc, key: str, sessions: sessionmaker[Session], apis: Apis, receivers: Receivers
) -> None:
    receiver = receivers()
    # this API's dispatcher looks once at its start, then sleeps through the job: it dies before sending
    asleep, asleep_proc = apis(mine.model_copy(update={"webhook_poll_s": 600.0}), "hooks-api-killed")
    job = submit(asleep, key, receiver.url)
    snapshots: set[tuple[str, str | None]] = set()
    deadline = time.monotonic() + 180  # a cold worker loads its model first
    while not any(status == "succeeded" for status, _ in snapshots):
        with sessions() as session:  # one statement, one snapshot: the job's status and its outbox row
            snapshots.add(
                tuple(
                    session.execute(
                        text(
                            "SELECT j.status, d.status FROM jobs j "
                            "LEFT JOIN webhook_deliveries d ON d.job_id = j.id WHERE j.id = :id"
                        ),
                        {"id": job["id"]},
                    ).one()
                )
            )
        assert time.monotonic() < deadline, snapshots
    os.killpg(asleep_proc.popen.pid, signal.SIGKILL)  # right after the finish
    assert snapshots <= {("queued", None), ("running", None), ("succeeded", "pending")}, snapshots
    time.sleep(2)  # the worker, alive, has the row in hand: it does not send it
    assert receiver.calls == [] and worker.alive()
    assert tuple(delivery(sessions, job["id"])) == ("pending", 0, None, None)

    apis(mine, "hooks-api-new")
    receiver.wait_for(1, timeout_s=30)
    time.sleep(0.5)
    assert len(receiver.calls) == 1 and job["id"] in receiver.calls[0][1].decode()
    assert tuple(delivery(sessions, job["id"]))[:3] == ("delivered", 1, 200)


def test_the_url_and_each_redirect_are_checked_again_at_delivery(
    mine: Settings, worker: Proc, key: str, sessions: sessionmaker[Session], apis: Apis, receivers: Receivers
) -> None:
    inside = receivers(host="127.0.0.2")  # loopback too: a private address, allowed only at submission
    redirect = receivers(answer=lambda: (307, {"Location": inside.url}))  # an allowed host pointing inside
    lenient = mine.model_copy(update={"allow_hosts": ["127.0.0.1", "127.0.0.2"], "webhooks_in_api": False})
    submitter, _ = apis(lenient, "hooks-api-lenient")  # takes both URLs, sends nothing
    direct = submit(submitter, key, inside.url, wait_s=180)
    redirected = submit(submitter, key, redirect.url, wait_s=180)
    assert direct["status"] == redirected["status"] == "succeeded"
    assert delivery(sessions, direct["id"]).attempts == 0  # accepted at submission, not yet sent

    apis(mine, "hooks-api-strict")  # delivers; allows 127.0.0.1 only
    deadline = time.monotonic() + 30
    while not all((d := delivery(sessions, j["id"])).attempts >= 1 and d.last_error for j in (direct, redirected)):
        assert time.monotonic() < deadline, [delivery(sessions, j["id"]) for j in (direct, redirected)]
        time.sleep(0.1)
    assert inside.calls == []  # neither the URL nor the redirect reached the internal host
    assert len(redirect.calls) >= 1  # the allowed host was asked, and its redirect not followed
    assert "127.0.0.2" in delivery(sessions, direct["id"]).last_error
    assert "redirect" in delivery(sessions, redirected["id"]).last_error


def test_failed_deliveries_wait_longer_and_longer(
    mine: Settings, worker: Proc, key: str, sessions: sessionmaker[Session], apis: Apis, receivers: Receivers
) -> None:
    failing = receivers(answer=lambda: (500, {}))
    api, _ = apis(mine, "hooks-api-backoff")
    job = submit(api, key, failing.url, wait_s=180)
    assert job["status"] == "succeeded"
    failing.wait_for(5, timeout_s=60)
    times = [t for t, _ in failing.calls[:5]]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    for attempt, gap in enumerate(gaps, start=1):
        pause = BASE_S * 2 ** (attempt - 1)
        # never before its backoff; after it by at most the dispatcher's 50 ms look and a request
        assert 0.5 * pause - 0.02 <= gap <= 1.5 * pause + 0.5, (attempt, gaps)
    assert gaps[3] > gaps[0], gaps  # at least 1.6 s against at most 0.6 s and a request
    row = delivery(sessions, job["id"])
    assert row.status == "pending" and row.attempts >= 5 and row.last_status_code == 500
