"""A real mlq stack for benchmarks: fresh database and Redis DB, `mlq api`, `mlq worker`."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from jobs.migrate import upgrade
from mlq.embedded import free_port
from tests.services import fresh_database, fresh_redis_db, start_services

MLQ = str(Path(sys.executable).with_name("mlq"))


@dataclass
class Stack:
    url: str
    key: str
    database_url: str
    redis_url: str
    env: dict[str, str]


def _wait(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready")


@contextlib.contextmanager
def running_stack(
    *,
    kinds: str | None,  # None: no worker (measure the API alone)
    data_dir: Path,
    log_dir: Path,
    extra_env: dict[str, str] | None = None,
    worker_args: Sequence[str] = (),  # more `mlq worker` options, e.g. ("--cpu", "--concurrency", "2")
) -> Iterator[Stack]:
    log_dir.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory() as tmp,
        start_services(Path(tmp)) as services,
        fresh_database(services.pg_admin_url) as database_url,
        fresh_redis_db(services.redis_base_url) as redis_url,
    ):
        upgrade(database_url)
        env = {
            **os.environ,
            "MLQ_DATABASE_URL": database_url,
            "MLQ_REDIS_URL": redis_url,
            "MLQ_DATA_DIR": str(data_dir),
            "HF_HUB_OFFLINE": "1",
            "MLQ_LOG_LEVEL": "WARNING",  # unless extra_env says otherwise (bench pipeline: INFO, the default)
            **(extra_env or {}),
        }
        key = (
            subprocess.run(
                [MLQ, "keys", "create", "--tenant", "bench"], env=env, capture_output=True, text=True, check=True
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        port = free_port()
        with open(log_dir / "worker.log", "wb") as worker_log, open(log_dir / "api.log", "wb") as api_log:
            procs = [
                subprocess.Popen([MLQ, "api", "--port", str(port)], env=env, stdout=api_log, stderr=subprocess.STDOUT)
            ]
            if kinds:
                procs.append(
                    subprocess.Popen(
                        [MLQ, "worker", "--kinds", kinds, "--loglevel", "WARNING", *worker_args],
                        env=env,
                        stdout=worker_log,
                        stderr=subprocess.STDOUT,
                    )
                )
        try:
            _wait(f"http://127.0.0.1:{port}/readyz", procs[0])
            yield Stack(
                url=f"http://127.0.0.1:{port}", key=key, database_url=database_url, redis_url=redis_url, env=env
            )
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
