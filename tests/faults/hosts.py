"""The multi-host fault stack: a PostgreSQL and a Redis of the test's own that listen only on
the links' outside addresses (and 127.0.0.1, for the test itself), and ``mlq`` processes started
on hosts (``tests.faults.netns``), each reaching them over its own links. ``Watcher`` reads what
clients are told while a fault runs and counts the seconds of wrong answers."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import threading
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
import redis
from psycopg import sql

from jobs.db import libpq_url, normalize_url
from jobs.migrate import upgrade
from jobs.settings import Settings
from mlq.embedded import free_port
from tests.conftest import ARTIFACTS, MLQ, ROOT, Proc, create_key, process_env
from tests.faults.conftest import LEASE_S, STATUS_WRITES, FaultStack, Hold, reachable_pg_binaries
from tests.faults.netns import Host, Network
from tests.faults.relay import Relay

KIND = "moderation"  # the tiny kind: MiniLM on a sentence
PUBLISH_TIMEOUT_S = 0.5  # the API's: with Redis cut off, a request waits this (and a retry) before it answers
TERMINAL = ("succeeded", "failed", "cancelled")


@dataclass
class LinkedServices:
    """PostgreSQL and redis-server in the root namespace, on the links' outside addresses."""

    pg_port: int
    redis_port: int
    pgdata: Path
    system_user: str | None

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.pg_port}/postgres"

    def database_url(self, name: str, host: Host | None = None) -> str:
        address = host.links["pg"].outside_addr if host else "127.0.0.1"
        return normalize_url(f"postgresql://postgres@{address}:{self.pg_port}/{name}")

    def redis_url(self, db: int, host: Host | None = None) -> str:
        address = host.links["redis"].outside_addr if host else "127.0.0.1"
        return f"redis://{address}:{self.redis_port}/{db}"

    def pg_ctl(self, *args: str) -> None:
        import pgserver

        pgserver.pg_ctl(["-w", *args], pgdata=self.pgdata, user=self.system_user, timeout=60)  # type: ignore[attr-defined]


@contextmanager
def linked_services(network: Network) -> Iterator[LinkedServices]:
    """Started after the hosts (their addresses must exist to be listened on)."""
    from mlq.embedded import start_postgres

    reachable_pg_binaries()
    # not under pytest's basetemp: PostgreSQL runs as another user (see own_postgres_stack)
    folder = Path(tempfile.mkdtemp(prefix="mlq-hosts-"))
    folder.chmod(0o755)
    started = start_postgres(folder / "pg")  # initdb as pgserver's user; restarted below on TCP
    server, pgdata = started.server, Path(started.server.pgdata)
    addresses = ["127.0.0.1", *network.outside_addrs()]
    hba = pgdata / "pg_hba.conf"
    hba.write_text(hba.read_text() + "".join(f"host all all {a}/24 trust\n" for a in addresses[1:]))
    pg_port, redis_port = free_port(), free_port()
    redis_proc: subprocess.Popen[bytes] | None = None
    services: LinkedServices | None = None
    try:
        services = LinkedServices(pg_port, redis_port, pgdata, server.system_user)
        services.pg_ctl("-m", "fast", "stop")
        options = f"-h {','.join(addresses)} -p {pg_port} -c max_connections=300 -c unix_socket_directories=''"
        services.pg_ctl("-o", options, "-l", str(pgdata / "tcp.log"), "start")
        redis_proc = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--bind", *addresses, "--port", str(redis_port),
             "--save", "", "--appendonly", "no", "--protected-mode", "no", "--dir", str(folder),
             "--logfile", str(folder / "redis.log"), "--maxmemory-policy", "noeviction"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_ping(services)
        yield services
    finally:
        if redis_proc is not None:
            redis_proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                redis_proc.wait(10)
            if redis_proc.poll() is None:
                redis_proc.kill()
                redis_proc.wait()
        if services is not None:
            with contextlib.suppress(Exception):
                services.pg_ctl("-m", "immediate", "stop")
        started.stop()
        shutil.rmtree(folder, ignore_errors=True)


def wait_ping(services: LinkedServices) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            redis.Redis.from_url(services.redis_url(0)).ping()
            with psycopg.connect(services.admin_url, connect_timeout=2):
                return
        except (redis.ConnectionError, psycopg.OperationalError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def logged(proc: Proc, text: str) -> int:
    """How often ``proc`` has logged ``text`` so far."""
    return proc.log_path.read_text(errors="replace").count(text)


class HostProc(Proc):
    """A ``mlq`` process on a host: ``ip netns exec`` runs it in the host's namespace."""

    def __init__(self, host: Host, name: str, args: list[str], env: dict[str, str], clock: str | None = None) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        self.name, self.host = name, host
        self.log_path = ARTIFACTS / f"{name}-{os.getpid()}.log"
        self.log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop(); a replaced process appends
        self.popen = subprocess.Popen(
            host.command([MLQ, *args], clock_offset=clock), env=env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


@dataclass
class HostStack(FaultStack):
    """A FaultStack whose processes run on hosts; ``settings``/``sql`` are the test's own view
    (over 127.0.0.1), each host's processes get the URLs of its own links (through its relays,
    where it has them). It lives as long as the module: ``reset`` empties it between scenarios."""

    services: LinkedServices | None = None
    database: str = ""
    redis_db: int = 0
    accepted: list[str] = field(default_factory=list)
    relays: dict[str, dict[str, Relay]] = field(default_factory=dict)  # host -> purpose -> relay
    holds: dict[str, Hold] = field(default_factory=dict)  # worker name -> its hold

    def start_on(self, host: Host, name: str, args: list[str], clock: str | None = None, **env: str) -> HostProc:
        assert self.services is not None
        pg, rd = self.services.database_url(self.database, host), self.services.redis_url(self.redis_db, host)
        if relays := self.relays.get(host.name):
            pg = pg.replace(f":{self.services.pg_port}/", f":{relays['pg'].port}/")
            rd = rd.replace(f":{self.services.redis_port}/", f":{relays['redis'].port}/")
        proc = HostProc(host, f"hosts-{name}", args, {**self.env, "MLQ_DATABASE_URL": pg, "MLQ_REDIS_URL": rd, **env},
                        clock)  # fmt: skip
        self.procs[name] = proc
        return proc

    def relay(self, host: Host) -> None:
        """From now on, ``host``'s processes reach PostgreSQL and Redis through relays on its links."""
        assert self.services is not None
        ports = {"pg": self.services.pg_port, "redis": self.services.redis_port}
        self.relays[host.name] = {
            purpose: Relay(listen=(host.links[purpose].outside_addr, 0), target=("127.0.0.1", port)).start()
            for purpose, port in ports.items()
        }

    def worker(self, host: Host, name: str, kind: str = KIND, clock: str | None = None) -> HostProc:
        """A worker of ``kind`` on ``host`` that holds its claims while ``holds[name]`` is on."""
        hold = self.holds[name] = Hold(self.settings.data_dir / f"hold-{name}-{uuid.uuid4().hex[:8]}")
        return self.start_on(host, name, ["worker", "--kinds", kind], clock, **hold.env)

    def submit_jobs(self, n: int, *, kind: str = KIND, threads: int = 8) -> list[str]:
        """``n`` jobs, concurrently; the ids that got a 202 (kept in ``accepted``)."""

        def one(index: int) -> str:
            with httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}) as http:
                text = f"host fault sentence {index} {uuid.uuid4().hex[:6]}"
                answer = http.post("/v1/jobs", json={"kind": kind, "input": {"text": text}}, timeout=60)
                assert answer.status_code == 202, answer.text
                job_id = str(answer.json()["id"])
                self.accepted.append(job_id)
                return job_id

        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(one, range(n)))

    def wait_until(self, what: str, check: Any, timeout_s: float = 60, every_s: float = 0.1) -> float:
        """Seconds until ``check()`` holds."""
        started = time.monotonic()
        while not check():
            assert time.monotonic() - started < timeout_s, f"{what}: not after {timeout_s}s"
            time.sleep(every_s)
        return time.monotonic() - started

    def succeeded(self, ids: list[str]) -> bool:
        return all(s == "succeeded" for s, _, _, _ in self.jobs(ids).values())

    def lock_holder(self) -> str | None:
        """The address the reconciler's advisory lock is held from."""
        from workers.reconciler import LOCK_ID

        rows = self.sql(
            """SELECT host(a.client_addr) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
               WHERE l.locktype = 'advisory' AND l.objid = %s AND l.granted""",
            LOCK_ID,
        )
        return rows[0][0] if rows else None

    def reset(self) -> None:
        """Between scenarios: every job gone (the processes run on), every hold off, no delay."""
        for hold in self.holds.values():
            hold.off()
        for relays in self.relays.values():
            for relay in relays.values():
                relay.delay_s, relay.loss = 0.0, 0.0
        self.wait_settled(timeout_s=60)
        with psycopg.connect(libpq_url(self.settings.require_database_url()), autocommit=True) as conn:
            conn.execute("TRUNCATE jobs, batches, status_writes CASCADE")
        self.accepted.clear()
        dead = [f"{name}:\n{proc.tail()}" for name, proc in self.procs.items() if not proc.alive()]
        assert not dead, "a process of the module's deployment exited: " + "\n".join(dead)


@contextmanager
def deployment(services: LinkedServices, settings: Settings, api_host: Host, **env: str) -> Iterator[HostStack]:
    """A database and a Redis database of its own, the API started on ``api_host``; the rest is the caller's."""
    name = f"mlq_hosts_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(services.admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    stack: HostStack | None = None
    try:
        url = services.database_url(name)
        upgrade(url)
        with psycopg.connect(libpq_url(url), autocommit=True) as conn:
            conn.execute(STATUS_WRITES)
            # the address each status change came from (the trigger runs in the writer's session)
            conn.execute("ALTER TABLE status_writes ADD COLUMN client inet DEFAULT inet_client_addr()")
        mine = Settings(**{**settings.model_dump(), "database_url": url, "redis_url": services.redis_url(1)})
        base = process_env(
            mine, MLQ_LEASE_S=str(LEASE_S), MLQ_REQUEUE_AFTER_S="2", MLQ_RECONCILE_EVERY_S="0.5",
            MLQ_LOG_LEVEL="WARNING", PYTHONPATH=str(ROOT), **env,
        )  # fmt: skip
        port = free_port()
        api_url = f"http://{api_host.links['clients'].inside_addr}:{port}"
        stack = HostStack(settings=mine, env=base, url=api_url, key=create_key(mine, "hosts"), services=services,
                          database=name, redis_db=1)  # fmt: skip
        api = stack.start_on(api_host, "api", ["api", "--host", "0.0.0.0", "--port", str(port)],
                             MLQ_PUBLISH_TIMEOUT_S=str(PUBLISH_TIMEOUT_S))  # fmt: skip
        stack.wait_until("the API answers", lambda: answers(f"{api_url}/healthz", api), timeout_s=90)
        yield stack
    finally:
        if stack is not None:
            for proc in stack.procs.values():  # all told at once, then each waited for
                if proc.alive():
                    proc.popen.terminate()
            for proc in stack.procs.values():
                proc.stop(timeout_s=5)
            for relays in stack.relays.values():
                for relay in relays.values():
                    relay.stop()
        with psycopg.connect(services.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def answers(url: str, proc: Proc) -> bool:
    assert proc.alive(), proc.tail()
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


class Watcher:
    """Reads the jobs as a client does (GET /v1/jobs) every ``every_s`` while a fault runs. A wrong
    answer: an accepted job missing, or a finished job shown with a status or result it does not
    keep (a later read, or the final one, differs). Unanswered reads are counted apart."""

    def __init__(self, stack: HostStack, kind: str = KIND, every_s: float = 1.0) -> None:
        self.stack, self.kind, self.every_s = stack, kind, every_s
        self.reads: list[tuple[set[str], dict[str, tuple[str, Any]]]] = []  # (accepted then, answers)
        self.unanswered = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watcher", daemon=True)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        headers = {"Authorization": f"Bearer {self.stack.key}"}
        with httpx.Client(base_url=self.stack.url, headers=headers, timeout=10) as http:
            while not self._stop.wait(self.every_s):
                known = set(self.stack.accepted)
                seen: dict[str, tuple[str, Any]] = {}
                params: dict[str, Any] = {"kind": self.kind, "limit": 200}
                try:
                    while True:  # every page: newest first, so a job accepted meanwhile is not missed
                        page = http.get("/v1/jobs", params=params)
                        page.raise_for_status()
                        seen.update((j["id"], answer(j["status"], j["output"])) for j in page.json()["data"])
                        if not page.json()["next_cursor"]:
                            break
                        params["cursor"] = page.json()["next_cursor"]
                except httpx.HTTPError:
                    self.unanswered += 1
                    continue
                self.reads.append((known, seen))

    def wrong_s(self) -> float:
        """Seconds (reads times ``every_s``) in which some answer was wrong, against the jobs' final rows."""
        final = {r[0]: answer(r[1], r[2]) for r in self.stack.sql("SELECT id::text, status, output FROM jobs")}
        wrong = 0
        for known, seen in self.reads:
            missing = any(job_id not in seen for job_id in known)
            changed = any(s in TERMINAL and (s, out) != final_of(final, job_id) for job_id, (s, out) in seen.items())
            wrong += missing or changed
        return wrong * self.every_s


def final_of(final: dict[str, tuple[str, Any]], job_id: str) -> tuple[str, Any]:
    return final.get(job_id, ("missing", None))


def answer(status: str, output: Any) -> tuple[str, Any]:
    """What a client acts on: the status, and a success's result."""
    return status, output if status == "succeeded" else None
