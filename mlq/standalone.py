"""``mlq standalone``: the whole stack on one machine, with no services installed.

Starts embedded PostgreSQL and Redis when ``MLQ_DATABASE_URL``/``MLQ_REDIS_URL``
are unset, migrates, creates (once) a first API key, starts the API and one
worker per kind group, and stops every child on Ctrl-C.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from jobs import keys, migrate
from jobs.db import make_engine, make_sessionmaker
from jobs.modelsfile import load_models_file
from jobs.settings import Settings
from mlq.embedded import free_port, start_postgres, start_redis
from workers.placement import THREADS_ENV, usable_cores

STATE_FILE = "standalone.json"  # the API URL and key, for `mlq demo` and the user
LONG_KINDS = frozenset({  # kinds whose jobs take seconds to minutes on a CPU
    "image-generation", "music-generation", "speech-recognition", "text-generation", "chat", "text2text-generation",
})  # fmt: skip
READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 20.0


class Stack:
    def __init__(self, settings: Settings, *, port: int | None, echo: Callable[[str], Any] = print) -> None:
        self.settings = settings
        self.data_dir = settings.data_dir.resolve()
        self.port = port or settings.api_port
        self.echo = echo
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.stoppers: list[Callable[[], None]] = []
        self.env = dict(os.environ, MLQ_DATA_DIR=str(self.data_dir), MLQ_STANDALONE="true")
        self.api_url = f"http://127.0.0.1:{self.port}"
        self.api_key = ""
        self.flower_url = ""
        self.flower_auth = f"ops:{secrets.token_urlsafe(12)}"  # new each start, printed with the URL
        self.metrics_urls: dict[str, str] = {"api": f"{self.api_url}/metrics"}

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        database_url = self.settings.database_url
        if not database_url:
            pg = start_postgres(self.data_dir / "postgres")
            self.stoppers.append(pg.stop)
            database_url = pg.url
            self.echo(f"embedded PostgreSQL: {self.data_dir / 'postgres'}")
        redis_url = self.settings.redis_url
        if not redis_url:
            rd = start_redis(self.data_dir / "redis", port=free_port())
            self.stoppers.append(rd.stop)
            redis_url = rd.url
            self.echo(f"embedded Redis:      {redis_url}")
        self.env.update(MLQ_DATABASE_URL=database_url, MLQ_REDIS_URL=redis_url)
        migrate.upgrade(database_url)
        self.api_key = self._first_key(database_url)
        logs = self.data_dir / "logs"
        logs.mkdir(exist_ok=True)
        self._spawn("api", ["api", "--host", "127.0.0.1", "--port", str(self.port)], logs)
        groups = load_models_file(self.settings.models).groups()
        # Every worker shares this machine with the others, the API and PostgreSQL: the cores are
        # split among the workers, or their OpenMP threads take one another's cores.
        threads = str(max(1, usable_cores() // len(groups))) if groups else "1"
        for group, kinds in groups.items():
            port = free_port()  # one metrics port per worker: they share this machine
            self.metrics_urls[f"worker-{group}"] = f"http://127.0.0.1:{port}/metrics"
            # two pool processes where long jobs of several kinds meet: an image of a minute
            # holds one, a music clip takes the other (with one, it waited behind the image)
            processes = "2" if len(set(kinds) & LONG_KINDS) > 1 else "1"
            self._spawn(
                f"worker-{group}",
                ["worker", "--kinds", ",".join(kinds), "--torch-threads", os.environ.get(THREADS_ENV, threads),
                 "--concurrency", processes],
                logs,
                MLQ_WORKER_METRICS_PORT=str(port),
            )  # fmt: skip
        port = free_port()
        self.metrics_urls["reconciler"] = f"http://127.0.0.1:{port}/metrics"
        self._spawn("reconciler", ["reconcile"], logs, MLQ_RECONCILER_METRICS_PORT=str(port))
        flower_port = free_port()
        self.flower_url = f"http://127.0.0.1:{flower_port}"
        self._spawn("flower", ["flower", "--port", str(flower_port)], logs, MLQ_FLOWER_BASIC_AUTH=self.flower_auth)
        self._wait_ready()
        (self.data_dir / STATE_FILE).write_text(json.dumps({"api_url": self.api_url, "api_key": self.api_key}))
        os.chmod(self.data_dir / STATE_FILE, 0o600)

    def _first_key(self, database_url: str) -> str:
        """The key made on the first start, kept (mode 0600) in the data folder."""
        state = self.data_dir / STATE_FILE
        engine = make_engine(database_url, pool_size=1)
        try:
            with make_sessionmaker(engine).begin() as session:
                if state.exists():
                    key = str(json.loads(state.read_text()).get("api_key", ""))
                    if key and keys.authenticate(session, key=key) is not None:
                        return key
                key, _ = keys.create_api_key(session, tenant="default", scopes=keys.SCOPES)
                return key
        finally:
            engine.dispose()

    def _spawn(self, name: str, args: list[str], logs: Path, **env: str) -> None:
        log = open(logs / f"{name}.log", "ab")  # noqa: SIM115 - kept open for the child's lifetime
        child = subprocess.Popen(
            [sys.executable, "-m", "mlq.cli", *args], env={**self.env, **env}, stdout=log, stderr=subprocess.STDOUT
        )
        self.children[name] = child
        self.echo(f"started {name} (pid {child.pid}), log {logs / f'{name}.log'}")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            for name, child in self.children.items():
                if child.poll() is not None:
                    raise RuntimeError(f"{name} exited with {child.returncode}; see {self.data_dir / 'logs'}")
            try:
                if httpx.get(f"{self.api_url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the API was not ready after {READY_TIMEOUT_S:.0f}s; see {self.data_dir / 'logs'}")

    def wait(self) -> int:
        """Until Ctrl-C/SIGTERM or a child dies; returns an exit code."""
        stop = {"signal": 0}

        def on_signal(signum: int, _: Any) -> None:
            stop["signal"] = signum

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        while not stop["signal"]:
            for name, child in self.children.items():
                if child.poll() is not None:
                    self.echo(f"{name} exited with {child.returncode}; stopping")
                    return 1
            time.sleep(0.5)
        return 0

    def stop(self) -> None:
        for child in self.children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for child in self.children.values():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        for stopper in reversed(self.stoppers):
            stopper()
