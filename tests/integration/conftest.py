"""Fixtures for tests that must have a database to themselves."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session, sessionmaker

from jobs.settings import Settings
from tests.conftest import sessions_of, stack_of_its_own
from tests.services import Services


@pytest.fixture(scope="module")
def own_settings(settings: Settings, services: Services) -> Iterator[Settings]:
    """Settings on a PostgreSQL and a Redis database of this module's own. On the session's
    database the session stack's reconciler (tests/conftest.py ``stack``, started by the e2e
    tests that ran before) takes expired leases back every second, racing a test that expires
    a lease on purpose."""
    with stack_of_its_own(settings, services) as own:
        yield own


@pytest.fixture(scope="module")
def own_sessions(own_settings: Settings) -> Iterator[sessionmaker[Session]]:
    with sessions_of(own_settings) as made:
        yield made
