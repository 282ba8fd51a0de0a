"""Real processes: ``mlq api`` and ``mlq worker`` on the test database and Redis."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from jobs.modelsfile import load_models_file
from jobs.settings import Settings
from mlq.embedded import free_port
from tests.conftest import Proc, create_key, process_env, wait_http
from tests.services import Services, fresh_redis_db


@dataclass
class Api:
    url: str
    settings: Settings

    def client(self, key: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def start_api(settings: Settings, name: str) -> tuple[Api, Proc]:
    port = free_port()
    proc = Proc(name, ["api", "--port", str(port)], process_env(settings))
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/healthz", proc)
    return Api(url=url, settings=settings), proc


@pytest.fixture(scope="session")
def stack(settings: Settings) -> Iterator[Api]:
    """The API and one worker serving every kind of the demo profile."""
    kinds = ",".join(sorted(load_models_file("demo").kinds))
    worker = Proc("worker", ["worker", "--kinds", kinds], process_env(settings))
    api, api_proc = start_api(settings, "api")
    try:
        yield api
    finally:
        api_proc.stop()
        worker.stop()


@pytest.fixture(scope="session")
def api_without_workers(settings: Settings, services: Services) -> Iterator[Api]:
    """An API on a Redis database no worker reads: what it publishes stays visible."""
    with fresh_redis_db(services.redis_base_url) as redis_url:
        limits = {"batch_max_lines": 5000, "batch_max_bytes": 3 << 20}
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
