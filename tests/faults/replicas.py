"""A PostgreSQL primary with a streaming standby of their own, under synchronous replication,
for a test to crash the primary (kill -9) and promote the standby; and a fault stack whose
processes reach them through one multi-host ``MLQ_DATABASE_URL``.

As root, PostgreSQL runs as the user pgserver runs it as, from pgserver's binaries (the copy
``reachable_pg_binaries`` keeps in the temporary folder), in a folder of its own outside
pytest's (which any pytest run on the machine makes 0700 again)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
import psycopg

from jobs.db import libpq_url
from jobs.migrate import upgrade
from jobs.settings import Settings
from mlq.embedded import free_port
from tests.conftest import ROOT, create_key, process_env, wait_http
from tests.faults.conftest import LEASE_S, STATUS_WRITES, FaultStack, reachable_pg_binaries
from tests.services import fresh_redis_db

DATABASE = "mlq"
STANDBY_READY_S = 60.0  # a base backup and the standby's catch-up, on a busy 2-core machine


@dataclass
class Node:
    """One PostgreSQL server: its data folder and TCP port on 127.0.0.1."""

    pgdata: Path
    port: int

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def pids(self) -> list[int]:
        """The postmaster and its children (backends, WAL sender, checkpointer...), if running."""
        try:
            postmaster = psutil.Process(int((self.pgdata / "postmaster.pid").read_text().split()[0]))
            found = [postmaster, *postmaster.children(recursive=True)]
        except (OSError, ValueError, IndexError, psutil.Error):
            return []
        return [p.pid for p in found if _alive(p)]


def _alive(process: psutil.Process) -> bool:
    """Running and not a zombie (a killed one nobody reaped). A backend that ended since the
    postmaster's children were listed is simply not there: under load connections come and go,
    and one gone between the two steps made the whole server look stopped (CI, 2026-11-30)."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class Pair:
    """A primary and its standby (``pg_basebackup -R``), the standby synchronous: a commit
    returns once the standby has flushed it, so what a client was told is committed survives
    the primary's loss."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.user = _system_user()
        self.primary = Node(folder / "primary", free_port())
        self.standby = Node(folder / "standby", free_port())

    def url(self, database: str = DATABASE) -> str:
        """libpq's multi-host form: whichever of the two accepts writes."""
        hosts = f"127.0.0.1:{self.primary.port},127.0.0.1:{self.standby.port}"
        return f"postgresql://postgres@{hosts}/{database}?target_session_attrs=read-write"

    def start(self) -> None:
        import pgserver

        self.folder.chmod(0o755)
        if self.user:
            shutil.chown(self.folder, self.user, self.user)
        self.primary.pgdata.mkdir(mode=0o700)
        if self.user:
            shutil.chown(self.primary.pgdata, self.user, self.user)
        pgserver.initdb(["--auth=trust", "--encoding=utf8", "-U", "postgres"], pgdata=self.primary.pgdata,
                        user=self.user)  # fmt: skip
        with (self.primary.pgdata / "postgresql.conf").open("a") as conf:
            conf.write(f"port = {self.primary.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\n")
        self._pg_ctl(self.primary, "start")
        with psycopg.connect(self.primary.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DATABASE}")
        pgserver.pg_basebackup(
            ["-D", str(self.standby.pgdata), "-h", "127.0.0.1", "-p", str(self.primary.port), "-U", "postgres",
             "-X", "stream", "-R", "-c", "fast"],
            user=self.user, timeout=STANDBY_READY_S,
        )  # fmt: skip
        with (self.standby.pgdata / "postgresql.auto.conf").open("a") as conf:
            conf.write(f"port = {self.standby.port}\n")
        self._pg_ctl(self.standby, "start")
        with psycopg.connect(self.primary.url(), autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET synchronous_standby_names = '*'")  # the standby's copy has none
            conn.execute("SELECT pg_reload_conf()")
            deadline = time.monotonic() + STANDBY_READY_S
            while conn.execute("SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'").fetchone() != (1,):
                assert time.monotonic() < deadline, "the standby never became synchronous"
                time.sleep(0.1)

    def kill_primary(self) -> int:
        """kill -9 of the primary's every process at once, as a crashed host: no shutdown, no
        checkpoint, every connection cut. Returns how many processes it killed."""
        pids = self.primary.pids()
        assert pids, "the primary is not running"
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return len(pids)

    def promote(self) -> None:
        self._pg_ctl(self.standby, "promote")

    def stop(self) -> None:
        for node in (self.standby, self.primary):
            if node.pids():
                with contextlib.suppress(subprocess.SubprocessError, OSError):
                    self._pg_ctl(node, "stop", "-m", "immediate")
            for pid in node.pids():  # a server pg_ctl could not stop
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def _pg_ctl(self, node: Node, *args: str) -> None:
        import pgserver

        pgserver.pg_ctl(["-w", "-l", str(node.pgdata.parent / f"{node.pgdata.name}.log"), *args],
                        pgdata=node.pgdata, user=self.user, timeout=STANDBY_READY_S)  # fmt: skip


def _system_user() -> str | None:
    """The user PostgreSQL runs as: pgserver's own when the tests run as root (PostgreSQL
    refuses root), else the tests' user."""
    if os.geteuid() != 0:
        return None
    from pgserver.utils import ensure_user_exists

    ensure_user_exists("pgserver")
    return "pgserver"


@contextmanager
def replicated_stack(settings: Settings, *, redis_base_url: str) -> Iterator[tuple[FaultStack, Pair]]:
    """A fault stack (the API and the reconciler started; workers are the test's) whose
    ``MLQ_DATABASE_URL`` names a primary and its standby, the primary first."""
    reachable_pg_binaries()
    pair = Pair(Path(tempfile.mkdtemp(prefix="mlq-failover-")))
    try:
        pair.start()
        with fresh_redis_db(redis_base_url) as redis_url:
            database_url = pair.url()
            upgrade(database_url)  # the migrations, through the multi-host URL too
            with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
                conn.execute(STATUS_WRITES)
            mine = Settings(**{**settings.model_dump(), "database_url": database_url, "redis_url": redis_url})
            env = process_env(
                mine, MLQ_LEASE_S=str(LEASE_S), MLQ_REQUEUE_AFTER_S="2", MLQ_RECONCILE_EVERY_S="0.5",
                MLQ_LOG_LEVEL="WARNING", PYTHONPATH=str(ROOT),
            )  # fmt: skip
            port = free_port()
            stack = FaultStack(settings=mine, env=env, url=f"http://127.0.0.1:{port}", key=create_key(mine, "failover"))
            try:
                api = stack.start("api", ["api", "--port", str(port)])
                wait_http(f"{stack.url}/healthz", api)
                stack.start("reconciler", ["reconcile"])
                yield stack, pair
            finally:
                for proc in stack.procs.values():
                    if proc.alive():
                        os.killpg(proc.popen.pid, signal.SIGKILL)
                    proc.stop(timeout_s=5)
    finally:
        pair.stop()
        shutil.rmtree(pair.folder, ignore_errors=True)
