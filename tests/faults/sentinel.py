"""A Redis Sentinel group of a test's own: a master, one replica and three sentinels, real
processes on free ports, in a folder of the test's, with no persistence; stopped after.

Debian's ``redis-sentinel`` runs the sentinels (``make sentinel`` installs it); where it is
missing, ``redis-server --sentinel`` does the same."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

from mlq.embedded import free_port, stop_process
from tests.services import unavailable

QUORUM = 2  # of three sentinels: one may be lost, and two must agree the master is down
DOWN_AFTER_MS = 1000  # the master is "subjectively down" after this long without an answer
FAILOVER_TIMEOUT_MS = 10_000


@dataclass
class Server:
    port: int
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        stop_process(self.process)


@dataclass
class SentinelGroup:
    folder: Path
    master_name: str
    password: str  # the master's and the replica's (requirepass, masterauth)
    sentinel_password: str  # the sentinels' own (their requirepass)
    master: Server
    replica: Server
    sentinels: list[Server] = field(default_factory=list)

    @property
    def url(self) -> str:
        """MLQ_REDIS_URL in kombu's Sentinel form, every sentinel named."""
        return ";".join(f"sentinel://:{self.password}@127.0.0.1:{s.port}" for s in self.sentinels) + "/0"

    def sentinel(self, server: Server) -> redis.Redis:
        return redis.Redis(port=server.port, password=self.sentinel_password, socket_timeout=1, decode_responses=True)

    def master_port(self) -> int | None:
        """The master's port as the first sentinel that answers names it."""
        for server in self.sentinels:
            with contextlib.suppress(redis.RedisError), self.sentinel(server) as client:
                found = client.sentinel_get_master_addr_by_name(self.master_name)
                return int(found[1]) if found else None
        return None

    def ready(self) -> bool:
        """Every sentinel knows the replica and the two other sentinels, and the replica is in sync."""
        try:
            for server in self.sentinels:
                with self.sentinel(server) as client:
                    info = client.sentinel_master(self.master_name)
                    if int(info["num-slaves"]) < 1 or int(info["num-other-sentinels"]) < len(self.sentinels) - 1:
                        return False
            with redis.Redis(port=self.replica.port, password=self.password, socket_timeout=1) as replica:
                return bool(replica.info("replication").get("master_link_status") == "up")
        except redis.RedisError:
            return False

    def wait(self, what: str, check: Callable[[], bool], timeout_s: float) -> float:
        """Seconds until ``check()`` is true."""
        start = time.monotonic()
        while not check():
            assert time.monotonic() - start < timeout_s, f"{what}: not within {timeout_s}s\n{self.logs()}"
            time.sleep(0.05)
        return time.monotonic() - start

    def logs(self, lines: int = 15) -> str:
        return "\n".join(
            f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
            for log in sorted(self.folder.glob("*.log"))
        )

    def stop(self) -> None:
        for server in [*self.sentinels, self.replica, self.master]:
            server.stop()


def redis_server() -> str:
    found = shutil.which("redis-server")
    if not found:
        unavailable("redis-server is not installed (apt-get install redis-server redis-sentinel)")
    return str(found)


def sentinel_command(config: Path) -> list[str]:
    """Debian's redis-sentinel, or redis-server in sentinel mode (the same program)."""
    found = shutil.which("redis-sentinel")
    return [found, str(config)] if found else [redis_server(), str(config), "--sentinel"]


def start_server(folder: Path, name: str, args: list[str]) -> Server:
    port = free_port()
    command = [redis_server(), "--bind", "127.0.0.1", "--port", str(port), "--dir", str(folder)]
    command += ["--save", "", "--appendonly", "no", "--logfile", str(folder / f"{name}.log"), *args]
    return Server(port=port, process=subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))


def start_sentinel(group: SentinelGroup, n: int) -> Server:
    port = free_port()
    config = group.folder / f"sentinel-{n}.conf"  # a sentinel rewrites its file as it learns
    config.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {group.folder}\nlogfile {group.folder / f'sentinel-{n}.log'}\n"
        f"requirepass {group.sentinel_password}\n"
        f"sentinel monitor {group.master_name} 127.0.0.1 {group.master.port} {QUORUM}\n"
        f"sentinel auth-pass {group.master_name} {group.password}\n"
        f"sentinel down-after-milliseconds {group.master_name} {DOWN_AFTER_MS}\n"
        f"sentinel failover-timeout {group.master_name} {FAILOVER_TIMEOUT_MS}\n"
        f"sentinel parallel-syncs {group.master_name} 1\n"
    )
    command = sentinel_command(config)
    return Server(port=port, process=subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))


@contextlib.contextmanager
def sentinel_group(folder: Path, *, master_name: str, timeout_s: float = 30) -> Iterator[SentinelGroup]:
    """Master, replica and three sentinels, up and agreed; stopped (every process) after."""
    folder.mkdir(parents=True, exist_ok=True)
    password, sentinel_password = uuid.uuid4().hex, uuid.uuid4().hex
    auth = ["--requirepass", password, "--masterauth", password]
    master = start_server(folder, "master", auth)
    group = SentinelGroup(folder, master_name, password, sentinel_password, master=master, replica=master)
    try:
        group.replica = start_server(folder, "replica", [*auth, "--replicaof", "127.0.0.1", str(master.port)])
        group.sentinels = [start_sentinel(group, n) for n in range(3)]
        group.wait("the sentinel group came up", group.ready, timeout_s)
        yield group
    finally:
        group.stop()
