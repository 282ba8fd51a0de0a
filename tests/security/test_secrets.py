"""No default secret works in production: placeholder passwords stop the services at startup."""

from __future__ import annotations

import subprocess

import pytest

from jobs.secrets import placeholder_secrets
from jobs.settings import Settings
from tests.conftest import MLQ, process_env


def test_placeholder_passwords_are_found_by_setting() -> None:
    bad = Settings(database_url="postgresql+psycopg://mlq:ChangeMe@db/mlq", redis_url="redis://:password@redis:6379/0")
    assert placeholder_secrets(bad, basic_auth="ops:admin") == [
        "MLQ_DATABASE_URL",
        "MLQ_REDIS_URL",
        "MLQ_FLOWER_BASIC_AUTH",
    ]
    good = Settings(database_url="postgresql://mlq:Vq9-x7Lr2@db/mlq", redis_url="redis://:t0k3n-8c1f@redis/0")
    assert placeholder_secrets(good, basic_auth="ops:Vq9-x7Lr2") == []
    trusted = Settings(database_url="postgresql://postgres@127.0.0.1/test", redis_url="redis://127.0.0.1:6379/0")
    assert placeholder_secrets(trusted) == []  # no password: the server trusts the connection


@pytest.mark.parametrize("command", [["api"], ["worker", "--kinds", "embedding"], ["reconcile", "--once"]])
def test_services_refuse_to_start_with_a_placeholder_password(settings: Settings, command: list[str]) -> None:
    env = process_env(settings)
    env["MLQ_REDIS_URL"] = env["MLQ_REDIS_URL"].replace("redis://", "redis://:changeme@", 1)
    out = subprocess.run([MLQ, *command], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert "the password in MLQ_REDIS_URL is a known placeholder" in out.stderr
    standalone = subprocess.run(
        [MLQ, "reconcile", "--once"], env={**env, "MLQ_STANDALONE": "true"}, capture_output=True, text=True, timeout=60
    )
    assert standalone.returncode == 0, standalone.stderr  # allowed inside `mlq standalone`: it ran
    assert "placeholder" not in standalone.stderr and "leases taken back" in standalone.stdout
