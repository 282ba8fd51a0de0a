"""Docker does not run here: the compose file and Dockerfiles are checked by reading them."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import click
import pytest
import typer
import yaml

from jobs.modelsfile import load_models_file
from jobs.settings import Settings
from mlq.cli import app

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
CLI = typer.main.get_command(app)


def mlq_services() -> dict[str, list[str]]:
    return {name: svc["command"] for name, svc in SERVICES.items() if svc.get("command", [None])[0] == "mlq"}


def test_compose_has_the_agreed_services() -> None:
    names = set(SERVICES)
    assert {"redis", "postgres", "migrate", "api", "flower"} <= names
    assert any(name.startswith("worker") for name in names)


@pytest.mark.parametrize("service", sorted(mlq_services()))
def test_every_mlq_command_parses_with_the_real_cli(service: str) -> None:
    argv = mlq_services()[service][1:]
    group = CLI
    while isinstance(group, click.Group):
        sub = group.get_command(click.Context(group), argv[0])
        assert sub is not None, f"{service}: `mlq {argv[0]}` is not a command"
        group, argv = sub, argv[1:]
    ctx = group.make_context(service, list(argv))  # raises on an unknown option or a bad value
    kinds = ctx.params.get("kinds")
    if kinds:
        assert set(kinds.split(",")) <= set(load_models_file("demo").kinds)


def test_every_mlq_variable_is_a_setting() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    fields = {f"MLQ_{name.upper()}" for name in Settings.model_fields}
    used = set(re.findall(r"\b(MLQ_[A-Z_]+)\b", text)) - {"MLQ_FLOWER_BASIC_AUTH"}  # read by `mlq flower`
    assert used and used <= fields, used - fields


def test_redis_keeps_what_it_is_given_and_asks_for_a_password() -> None:
    command = shlex.split(SERVICES["redis"]["command"])
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert "--requirepass" in command


def test_workers_reserve_and_pin_a_gpu() -> None:
    for name, svc in SERVICES.items():
        if name.startswith("worker"):
            devices = svc["deploy"]["resources"]["reservations"]["devices"]
            assert devices[0]["capabilities"] == ["gpu"]
            assert "--gpu" in svc["command"]


def test_api_image_installs_no_torch_and_worker_image_does() -> None:
    api = (ROOT / "infra" / "Dockerfile.api").read_text()
    worker = (ROOT / "infra" / "Dockerfile.worker").read_text()
    assert re.search(r"pip install [^\n]*\.\s*$", api, re.M) and "[worker]" not in api
    assert '".[worker]"' in worker and "cuda" in worker.lower()
    for svc in ("migrate", "api", "flower"):
        assert SERVICES[svc]["build"]["dockerfile"] == "infra/Dockerfile.api"
