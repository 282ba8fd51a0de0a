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


def test_results_are_compressed_with_lz4_where_postgresql_has_it(sessions: sessionmaker[Session]) -> None:
    """Migration 0007: lz4 where PostgreSQL was built with it (the system one here), pglz where not."""
    from sqlalchemy import text

    with sessions() as session:
        methods = dict(
            session.execute(
                text(
                    "SELECT attname, attcompression FROM pg_attribute "
                    "WHERE attrelid = 'jobs'::regclass AND attname IN ('input', 'output')"
                )
            ).all()
        )
        try:  # the same probe as the migration's, on a table of our own
            with session.begin_nested():
                session.execute(text("CREATE TEMP TABLE lz4_probe (v text COMPRESSION lz4)"))
            has_lz4 = True
        except Exception:
            has_lz4 = False
    assert methods == ({"input": "l", "output": "l"} if has_lz4 else {"input": "", "output": ""})
