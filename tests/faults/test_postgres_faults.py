"""PostgreSQL goes away: a worker keeps the results it computed and writes them when it is
back, and the API answers 503 at once without publishing anything it could not store.
Each test runs on a PostgreSQL of its own, which it crashes."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from sqlalchemy.engine import make_url

from tests.faults.conftest import FaultStack, N, OwnPostgres, record, texts

WORKER = ["worker", "--kinds", "embedding"]
WRITE_LEASE_S = 30.0  # the worker's lease here: a result write is retried for up to a lease, past a restart
CONNECT_TIMEOUT_S = 5.0  # the README's "503 at once (a 5 s connect timeout)"
AT_ONCE_S = 1.0


def test_postgres_restarted_during_result_writes(own_postgres_stack: tuple[FaultStack, OwnPostgres]) -> None:
    """PostgreSQL crashes (immediate shutdown: no checkpoint, crash recovery at start) while a
    worker holds a claim's computed results; the worker writes them into the stopped server,
    retries, and they land when it is back: every job ran once (attempt 1, no lost attempt)."""
    stack, postgres = own_postgres_stack
    hold = stack.hold("pg")
    worker = stack.start("worker", WORKER, MLQ_LEASE_S=str(WRITE_LEASE_S), **hold.env)
    accepted = stack.submit(texts())
    held = hold.held(worker)
    at_fault = stack.jobs(held)
    assert held and {(s, a) for s, a, _, _ in at_fault.values()} == {("running", 1)}, at_fault
    postgres.pg_ctl("-m", "immediate", "stop")
    fault_at = time.monotonic()
    hold.off()  # the results go to a PostgreSQL that is down
    deadline = time.monotonic() + 30
    while "result write failed" not in worker.log_path.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"the worker never tried to write:\n{worker.tail()}"
        time.sleep(0.05)
    time.sleep(1)  # a few more tries
    postgres.start()
    figures = stack.settle(
        accepted, fault_at=fault_at, name="PostgreSQL restarted during result writes", running_at_fault=len(at_fault),
        write_failures=worker.log_path.read_text(errors="replace").count("result write failed"),
    )  # fmt: skip
    for job_id, (status, attempt, history, by) in stack.jobs(held).items():
        # stored by the worker that computed it, in the attempt it had
        assert (status, attempt, history, by) == ("succeeded", 1, [], at_fault[job_id][3]), job_id
    [(once,)] = stack.sql("SELECT count(*) FROM jobs WHERE attempt = 1 AND history = '[]'::jsonb")
    assert once == N and figures["succeeded"] == N and figures["retried"] == 0


def test_with_postgres_down_the_api_answers_503_at_once_and_keeps_nothing(
    own_postgres_stack: tuple[FaultStack, OwnPostgres],
) -> None:
    """A stopped server refuses connections: 503 at once. A hung one (it takes the connection
    and never answers) is given up after the 5 s connect timeout: 503 then, not a hung request.
    Nothing refused is stored or published."""
    stack, postgres = own_postgres_stack
    with stack.http() as http:
        assert http.post("/v1/jobs", json={"kind": "embedding", "input": {"text": "before"}}).status_code == 202
        queued_before = stack.messages().total
        postgres.pg_ctl("-m", "immediate", "stop")
        try:
            refused = [timed_503(http, f"while down {n}") for n in range(3)]  # the key cached or not: both 503
            started = time.monotonic()
            assert http.get("/readyz").status_code == 503
            refused.append(time.monotonic() - started)
            with hung_postgres(stack.settings.require_database_url()):
                hung = [timed_503(http, f"while hung {n}") for n in range(2)]
            published = stack.messages().total - queued_before
            assert published == 0  # nothing published
        finally:
            postgres.start()
        record({"fault": "PostgreSQL down: the API answers 503", "refused_503_s": rounded(refused),
                "hung_503_s": rounded(hung), "published": published})  # fmt: skip
        assert max(refused) < AT_ONCE_S, refused
        assert all(abs(s - CONNECT_TIMEOUT_S) < AT_ONCE_S for s in hung), hung  # given up at the connect timeout
        deadline = time.monotonic() + 30
        after = {"kind": "embedding", "input": {"text": "after"}}
        while (again := http.post("/v1/jobs", json=after)).status_code != 202:
            assert time.monotonic() < deadline, again.text
            time.sleep(0.5)
    texts_stored = {row[0] for row in stack.sql("SELECT input->>'text' FROM jobs")}
    assert texts_stored == {"before", "after"}  # nothing of what was refused


def timed_503(http: httpx.Client, text: str) -> float:
    started = time.monotonic()
    down = http.post("/v1/jobs", json={"kind": "embedding", "input": {"text": text}})
    answered_s = time.monotonic() - started
    assert down.status_code == 503, down.text
    assert "unavailable; nothing was accepted" in down.text
    return answered_s


def rounded(seconds: list[float]) -> list[float]:
    return [round(s, 3) for s in seconds]


@contextmanager
def hung_postgres(database_url: str) -> Iterator[None]:
    """A listener on the stopped server's socket that takes connections into its backlog and
    never answers, as a hung or unreachable host does."""
    url = make_url(database_url)
    path = Path(str(url.query["host"])) / f".s.PGSQL.{url.port or 5432}"
    path.unlink(missing_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        path.chmod(0o777)
        listener.listen(64)
        try:
            yield
        finally:
            path.unlink(missing_ok=True)
