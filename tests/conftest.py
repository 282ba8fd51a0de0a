"""Shared fixtures: a fresh database and Redis DB per run, settings, and process helpers."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
from sqlalchemy.orm import Session, sessionmaker

from jobs.db import make_engine, make_sessionmaker
from jobs.migrate import upgrade
from jobs.modelsfile import load_models_file
from jobs.settings import Settings
from mlq.embedded import free_port
from tests.services import Services, fresh_database, fresh_redis_db, start_services

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

ROOT = Path(__file__).resolve().parent.parent
MLQ = str(Path(sys.executable).with_name("mlq"))  # the installed console script
ARTIFACTS = ROOT / "test-artifacts"  # logs of started processes, kept for CI


@pytest.fixture(scope="session", autouse=True)
def no_process_left_behind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Fails the run when a process a test started outlives the tests: any child of this
    pytest process, or any process whose command line names this run's temporary folder (a
    PostgreSQL restarted with pg_ctl is nobody's child). Autouse and session-wide, so it is
    set up first and checks last, after every other fixture has stopped what it started."""
    base = str(tmp_path_factory.getbasetemp())
    yield
    deadline = time.monotonic() + 15  # what was just stopped may take a moment to exit
    while (left := leftovers(base)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for proc in left:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    assert not left, "processes left running after the tests: " + "; ".join(described(p) for p in left)


def leftovers(base: str) -> list[psutil.Process]:
    me = psutil.Process()
    found = {p.pid: p for p in me.children(recursive=True)}
    ours = {me.pid, *(p.pid for p in me.parents())}  # `pytest --basetemp=...` names the folder itself
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if proc.info["pid"] not in ours and base in " ".join(proc.info["cmdline"] or []):
            found[proc.info["pid"]] = proc
    alive = []
    for proc in found.values():
        with contextlib.suppress(psutil.Error):
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
    return alive


def described(proc: psutil.Process) -> str:
    try:
        return f"{proc.pid} {' '.join(proc.cmdline())[:200]}"
    except psutil.Error:
        return str(proc.pid)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data folder for the run, so tiny models are built once."""
    return tmp_path_factory.mktemp("mlq-data")


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    with start_services(tmp_path_factory.mktemp("services")) as found:
        yield found


@pytest.fixture(scope="session")
def database_url(services: Services) -> Iterator[str]:
    with fresh_database(services.pg_admin_url) as url:
        upgrade(url)
        yield url


@pytest.fixture(scope="session")
def redis_url(services: Services) -> Iterator[str]:
    with fresh_redis_db(services.redis_base_url) as url:
        yield url


@pytest.fixture(scope="session")
def settings(database_url: str, redis_url: str, data_dir: Path) -> Settings:
    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        data_dir=data_dir,
        allow_hosts=["127.0.0.1"],  # the tests' webhook receivers listen there
        webhook_retry_base_s=0.3,
        max_wait_s=300,  # the first jobs wait for a cold worker to build the demo models
        worker_metrics_port=0,  # many workers run at once here; a test that reads metrics picks a port
        reconciler_metrics_port=0,
    )


@pytest.fixture(scope="session")
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(database_url, pool_size=2)
    yield make_sessionmaker(engine)
    engine.dispose()


def process_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a started ``mlq`` process: every setting that differs from its
    default, as the ``MLQ_*`` variable the process reads back."""
    env = dict(os.environ)
    for name, field in Settings.model_fields.items():
        value = getattr(settings, name)
        default = field.get_default(call_default_factory=True)
        if value is not None and value != default:
            env[f"MLQ_{name.upper()}"] = json.dumps(value) if isinstance(value, list | dict) else str(value)
    env.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


class Proc:
    """A started ``mlq`` process with its log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, name: str, args: list[str], env: dict[str, str]) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        self.name = name
        self.log_path = ARTIFACTS / f"{name}-{os.getpid()}.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            [MLQ, *args], env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout_s: float = 20) -> None:
        if self.alive():
            self.popen.terminate()
            try:
                self.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, 9)
                self.popen.wait()
        self.log.close()


def wait_http(url: str, proc: Proc, *, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout_s}s:\n{proc.tail()}")


def create_key(settings: Settings, tenant: str, scopes: str = "submit,read") -> str:
    """Through the real CLI, as an operator would."""
    out = subprocess.run(
        [MLQ, "keys", "create", "--tenant", tenant, "--scopes", scopes],
        env=process_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1]


@contextlib.contextmanager
def stack_of_its_own(settings: Settings, services: Services, **changes: object) -> Iterator[Settings]:
    """Settings on a PostgreSQL database and a Redis database no other stack uses. A stack that
    shares only the Redis database is not alone: the session stack's reconciler republishes a
    job queued 30 s (a cold worker still loading its models) to its own worker, as it should."""
    with fresh_database(services.pg_admin_url) as database_url, fresh_redis_db(services.redis_base_url) as redis_url:
        upgrade(database_url)
        own = {"database_url": database_url, "redis_url": redis_url, **changes}
        yield Settings(**{**settings.model_dump(), **own})


@contextlib.contextmanager
def sessions_of(settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(settings.require_database_url(), pool_size=1)
    try:
        yield make_sessionmaker(engine)
    finally:
        engine.dispose()


# --- real processes: `mlq api` and `mlq worker` on the test database and Redis ---


@dataclass
class Api:
    url: str
    settings: Settings

    def client(self, key: str) -> httpx.Client:
        # longer than the longest ?wait a test asks for (180 s), so the server answers first
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=240)


def start_api(settings: Settings, name: str) -> tuple[Api, Proc]:
    port = free_port()
    proc = Proc(name, ["api", "--port", str(port)], process_env(settings))
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/healthz", proc)
    return Api(url=url, settings=settings), proc


@pytest.fixture(scope="session")
def stack(settings: Settings) -> Iterator[Api]:
    """The API, one worker serving every kind of the demo profile, and the reconciler, as a
    deployment runs them (a wake-up that goes astray is published again)."""
    kinds = ",".join(sorted(load_models_file("demo").kinds))
    worker = Proc("worker", ["worker", "--kinds", kinds], process_env(settings))
    reconciler = Proc("reconciler", ["reconcile"], process_env(settings))
    api, api_proc = start_api(settings, "api")
    try:
        yield api
    finally:
        api_proc.stop()
        worker.stop()
        reconciler.stop()


@pytest.fixture(scope="session")
def api_without_workers(settings: Settings, services: Services) -> Iterator[Api]:
    """An API on a Redis database no worker reads: what it publishes stays visible."""
    with fresh_redis_db(services.redis_base_url) as redis_url:
        limits = {"batch_max_lines": 5000, "batch_max_bytes": 3 << 20, "max_request_bytes": 2 << 20}
        # no worker runs its jobs: a ?wait ends within the fuzzer's 10 s request timeout (a job id it
        # learned from an answer waited 77 s once), and OpenAI's routes answer 504 at once
        limits.update(max_wait_s=5, openai_wait_s=0.05)
        lonely = Settings(**{**settings.model_dump(), "redis_url": redis_url, **limits})
        api, proc = start_api(lonely, "api-no-workers")
        try:
            yield api
        finally:
            proc.stop()


@pytest.fixture(scope="session")
def key(settings: Settings) -> str:
    return create_key(settings, "tenant-a")


@pytest.fixture(scope="session")
def other_key(settings: Settings) -> str:
    return create_key(settings, "tenant-b")
