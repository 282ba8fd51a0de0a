"""The migrations create exactly the tables the code declares."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.orm import Session, sessionmaker

from jobs.tables import Base


def test_migrated_schema_matches_the_tables(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        context = MigrationContext.configure(session.connection())
        diff = compare_metadata(context, Base.metadata)
    assert diff == []
