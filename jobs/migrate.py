"""Apply the Alembic migrations (``mlq migrate``; automatic in ``mlq standalone``)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from jobs.db import normalize_url

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", normalize_url(database_url).replace("%", "%%"))
    return config


def upgrade(database_url: str, *, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, *, revision: str) -> None:
    command.downgrade(alembic_config(database_url), revision)
