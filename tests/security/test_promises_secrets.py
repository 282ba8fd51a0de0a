"""Flower and placeholder secrets, as real processes: `mlq flower` binds 127.0.0.1 unless told
otherwise and refuses a placeholder password; a placeholder password in MLQ_DATABASE_URL
stops the services (the test PostgreSQL trusts the connection, so only mlq's check can)."""

from __future__ import annotations

import socket
import subprocess
import time

import psutil
import pytest
from sqlalchemy.engine import make_url

from jobs.settings import Settings
from mlq.embedded import free_port
from tests.conftest import MLQ, Proc, process_env

FLOWER_AUTH = "ops:Vq9-flower-promises"


def other_addresses() -> list[str]:
    """This machine's IPv4 addresses that are not loopback."""
    return [
        a.address
        for addresses in psutil.net_if_addrs().values()
        for a in addresses
        if a.family == socket.AF_INET and not a.address.startswith("127.")
    ]


def connects(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def test_flower_binds_127_0_0_1_by_default(settings: Settings) -> None:
    port = free_port()
    flower = Proc(
        "flower-default-bind", ["flower", "--port", str(port)], process_env(settings, MLQ_FLOWER_BASIC_AUTH=FLOWER_AUTH)
    )
    try:
        deadline = time.monotonic() + 60
        while not connects("127.0.0.1", port):
            assert time.monotonic() < deadline and flower.alive(), flower.tail()
            time.sleep(0.2)
        listening = [
            c.laddr
            for c in psutil.Process(flower.popen.pid).net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port
        ]
        assert listening and {addr.ip for addr in listening} == {"127.0.0.1"}, listening
        for address in other_addresses():  # reachable from elsewhere only through those
            assert not connects(address, port), address
    finally:
        flower.stop()


@pytest.mark.parametrize(
    "how", [{"MLQ_FLOWER_BASIC_AUTH": "ops:changeme"}, {"MLQ_FLOWER_BASIC_AUTH": "ops:Password"}, "--basic-auth"]
)
def test_flower_refuses_a_placeholder_password(settings: Settings, how: dict[str, str] | str) -> None:
    env = process_env(settings)
    env.pop("MLQ_FLOWER_BASIC_AUTH", None)
    args = [MLQ, "flower", "--port", str(free_port())]
    if isinstance(how, dict):
        env.update(how)
    else:
        args += [how, "ops:admin"]
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    assert "placeholder" in out.stderr, out.stderr


def test_a_placeholder_password_in_the_database_url_stops_every_service(settings: Settings) -> None:
    url = make_url(settings.require_database_url())
    placeholder = url.set(password="changeme").render_as_string(hide_password=False)
    # a server that trusts the connection ignores the password; one that checks it gets its own
    real = url.set(password=url.password or "Vq9-x7Lr2-kept-out").render_as_string(hide_password=False)
    for command in (["api", "--port", str(free_port())], ["worker", "--kinds", "embedding"], ["reconcile", "--once"]):
        env = process_env(settings, MLQ_DATABASE_URL=placeholder)
        out = subprocess.run([MLQ, *command], env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 2, (command, out.stdout, out.stderr)
        assert "the password in MLQ_DATABASE_URL is a known placeholder" in out.stderr, out.stderr
    # the same server with a real password: it runs, so the refusal above was mlq's own
    ran = subprocess.run(
        [MLQ, "reconcile", "--once"],
        env=process_env(settings, MLQ_DATABASE_URL=real),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 0 and "leases taken back" in ran.stdout, (ran.stdout, ran.stderr)
