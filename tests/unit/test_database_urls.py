"""``MLQ_DATABASE_URL`` in libpq's multi-host form (a primary and its standbys, the one that
takes writes chosen by ``target_session_attrs=read-write``): what SQLAlchemy's engine and
psycopg are given, and the placeholder-secret check."""

from __future__ import annotations

import pytest
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy import create_engine

from jobs.db import libpq_url, normalize_url
from jobs.secrets import placeholder_secrets
from jobs.settings import Settings

MULTI = "postgresql://mlq:s3cr%40t@db-a:5432,db-b:5433/mlq?target_session_attrs=read-write"
LIBPQ = {"user": "mlq", "password": "s3cr@t", "dbname": "mlq", "host": "db-a,db-b", "port": "5432,5433",
         "target_session_attrs": "read-write"}  # fmt: skip


def connect_args(url: str) -> dict[str, object]:
    """What SQLAlchemy hands psycopg.connect for ``url``, as mlq's engine gets it."""
    engine = create_engine(normalize_url(url))
    args = engine.dialect.create_connect_args(engine.url)[1]
    return {k: v for k, v in args.items() if k != "context"}


@pytest.mark.parametrize(
    "url",
    [
        MULTI,
        MULTI.replace("postgresql://", "postgres://"),
        MULTI.replace("postgresql://", "postgresql+psycopg://"),
        # SQLAlchemy's two spellings of the same
        "postgresql+psycopg://mlq:s3cr%40t@/mlq?host=db-a:5432&host=db-b:5433&target_session_attrs=read-write",
        "postgresql+psycopg://mlq:s3cr%40t@/mlq?host=db-a,db-b&port=5432,5433&target_session_attrs=read-write",
    ],
)
def test_every_spelling_of_two_hosts_reaches_libpq_intact(url: str) -> None:
    assert connect_args(url) == LIBPQ  # the engine's connections (API, workers, reconciler, migrations)
    assert libpq_url(url) == MULTI  # psycopg.connect's (the API's LISTEN connection, the tests)
    assert conninfo_to_dict(libpq_url(url)) == LIBPQ
    assert normalize_url(normalize_url(url)) == normalize_url(url)


def test_a_host_without_a_port_gets_the_default() -> None:
    assert libpq_url("postgresql://u@a,b:6000/db") == "postgresql://u@a,b:6000/db"
    assert connect_args("postgresql://u@a,b:6000/db")["port"] == ",6000"  # libpq: empty is 5432
    assert conninfo_to_dict(libpq_url("postgresql://u@a,b/db"))["host"] == "a,b"


def test_ipv6_hosts_keep_their_brackets() -> None:
    url = "postgresql://u@[fd00::1]:5432,[fd00::2]:5433/db?target_session_attrs=read-write"
    assert libpq_url(url) == url
    assert connect_args(url)["host"] == "fd00::1,fd00::2"


def test_a_single_host_and_a_socket_folder_are_unchanged() -> None:
    assert libpq_url("postgresql+psycopg://u:pw@h:5432/db") == "postgresql://u:pw@h:5432/db"
    socket = "postgresql+psycopg://postgres:@/postgres?host=%2Ftmp%2Fpg"
    assert normalize_url(socket) == socket
    assert conninfo_to_dict(libpq_url(socket))["host"] == "/tmp/pg"


def test_hosts_and_ports_that_do_not_pair_are_refused() -> None:
    with pytest.raises(ValueError, match="3 hosts and 2 ports"):
        libpq_url("postgresql+psycopg://u@/db?host=a,b,c&port=1,2")


def test_a_placeholder_password_is_found_in_a_multi_host_url() -> None:
    weak = Settings(database_url="postgresql://mlq:changeme@db-a:5432,db-b:5433/mlq?target_session_attrs=read-write")
    assert placeholder_secrets(weak) == ["MLQ_DATABASE_URL"]
    assert placeholder_secrets(Settings(database_url=MULTI)) == []
