"""A stack per fault test: its own database and Redis DB, short leases and thresholds, real
`mlq api`, `mlq worker` and `mlq reconcile` processes; and the figures each test prints."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from jobs.db import libpq_url
from jobs.migrate import upgrade
from jobs.settings import Settings
from mlq.embedded import free_port
from tests.conftest import ROOT, Proc, create_key, process_env, wait_http
from tests.services import Services, fresh_database, fresh_redis_db

N = 200  # jobs per fault test
LEASE_S = 3.0  # short, so a dead worker's jobs come back within seconds
RESULT_WRITES = """
CREATE TABLE result_writes (job_id uuid NOT NULL, written_at timestamptz NOT NULL DEFAULT now());
CREATE FUNCTION log_result_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO result_writes (job_id) VALUES (NEW.id); RETURN NEW; END $$;
CREATE TRIGGER log_result_write AFTER UPDATE OF status ON jobs FOR EACH ROW
    WHEN (NEW.status = 'succeeded') EXECUTE FUNCTION log_result_write();
"""
FIGURES: list[str] = []


@dataclass
class FaultStack:
    settings: Settings
    env: dict[str, str]
    url: str
    key: str
    procs: dict[str, Proc] = field(default_factory=dict)

    def start(self, name: str, args: list[str], **env: str) -> Proc:
        proc = Proc(f"fault-{name}", args, {**self.env, **env})
        self.procs[name] = proc
        return proc

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=30)

    def submit(self, texts: list[str], *, url: str | None = None) -> list[str]:
        def one(text: str) -> str:
            with httpx.Client(
                base_url=url or self.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=30
            ) as http:
                answer = http.post("/v1/jobs", json={"kind": "embedding", "input": {"text": text}})
                assert answer.status_code == 202, answer.text
                return str(answer.json()["id"])

        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(one, texts))

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(libpq_url(self.settings.require_database_url())) as conn:
            return list(conn.execute(query, params).fetchall())

    def count(self, status: str) -> int:
        return int(self.sql("SELECT count(*) FROM jobs WHERE status = %s", status)[0][0])

    def wait_for(self, status: str, at_least: int, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while self.count(status) < at_least:
            assert time.monotonic() < deadline, f"fewer than {at_least} jobs {status}"
            time.sleep(0.05)

    def settle(self, accepted: list[str], *, fault_at: float, name: str, timeout_s: float = 180) -> dict[str, Any]:
        """Wait until every accepted job is terminal; assert and print the figures."""
        deadline = time.monotonic() + timeout_s
        while self.sql("SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')")[0][0]:
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        recover_s = time.monotonic() - fault_at
        [(terminal,)] = self.sql("SELECT count(*) FROM jobs WHERE status IN ('succeeded', 'failed', 'cancelled')")
        [(writes, distinct)] = self.sql("SELECT count(*), count(DISTINCT job_id) FROM result_writes")
        figures = {
            "fault": name, "N": len(accepted), "lost": len(accepted) - terminal, "duplicates": writes - distinct,
            "stuck_running": self.count("running"), "succeeded": self.count("succeeded"),
            "failed": self.count("failed"), "recover_s": round(recover_s, 1),
        }  # fmt: skip
        FIGURES.append(" | ".join(f"{k}={v}" for k, v in figures.items()))
        print(FIGURES[-1])
        assert figures["lost"] == 0 and figures["duplicates"] == 0 and figures["stuck_running"] == 0, figures
        return figures


@contextmanager
def open_stack(settings: Settings, *, pg_admin_url: str, redis_base_url: str) -> Iterator[FaultStack]:
    """A fresh database and Redis DB, the API and the reconciler started; workers are the test's."""
    with fresh_database(pg_admin_url) as database_url, fresh_redis_db(redis_base_url) as redis_url:
        upgrade(database_url)
        with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
            conn.execute(RESULT_WRITES)
        mine = Settings(**{**settings.model_dump(), "database_url": database_url, "redis_url": redis_url})
        env = process_env(
            mine, MLQ_LEASE_S=str(LEASE_S), MLQ_REQUEUE_AFTER_S="2", MLQ_RECONCILE_EVERY_S="0.5",
            MLQ_LOG_LEVEL="WARNING", PYTHONPATH=str(ROOT),
        )  # fmt: skip
        port = free_port()
        stack = FaultStack(settings=mine, env=env, url=f"http://127.0.0.1:{port}", key=create_key(mine, "faults"))
        api = stack.start("api", ["api", "--port", str(port)])
        wait_http(f"{stack.url}/healthz", api)
        stack.start("reconciler", ["reconcile"])
        try:
            yield stack
        finally:
            for proc in stack.procs.values():
                if proc.alive():
                    os.killpg(proc.popen.pid, signal.SIGKILL)
                proc.stop(timeout_s=5)


@pytest.fixture
def fault_stack(services: Services, settings: Settings) -> Iterator[FaultStack]:
    with open_stack(settings, pg_admin_url=services.pg_admin_url, redis_base_url=services.redis_base_url) as stack:
        yield stack


@dataclass
class OwnPostgres:
    """A PostgreSQL of one test's own (pgserver's binaries), so the test may stop and restart it."""

    server: Any  # pgserver.PostgresServer
    admin_url: str

    def pg_ctl(self, *args: str) -> None:
        import pgserver

        # as the user pgserver runs PostgreSQL as (another one when the tests run as root)
        pgserver.pg_ctl(["-w", *args], pgdata=self.server.pgdata, user=self.server.system_user)

    def start(self) -> None:
        self.server.ensure_postgres_running()  # with the socket options it was first started with


@pytest.fixture
def own_postgres_stack(
    services: Services, settings: Settings, tmp_path: Path
) -> Iterator[tuple[FaultStack, OwnPostgres]]:
    from mlq.embedded import start_postgres

    server = start_postgres(tmp_path / "pg")
    own = OwnPostgres(server=server.server, admin_url=libpq_url(server.url))
    try:
        with open_stack(settings, pg_admin_url=own.admin_url, redis_base_url=services.redis_base_url) as stack:
            yield stack, own
    finally:
        # a server the test restarted with pg_ctl is not the one pgserver started: stop whatever runs
        with contextlib.suppress(Exception):
            own.pg_ctl("-m", "fast", "stop")
        server.stop()


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def texts(n: int = N) -> list[str]:
    return [f"fault test sentence {i} {uuid.uuid4().hex[:6]}" for i in range(n)]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES:
        terminalreporter.section("fault figures")
        for line in FIGURES:
            terminalreporter.write_line(line)
