"""The migrations create exactly the tables the code declares."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.orm import Session, sessionmaker

from jobs.migrate import upgrade
from jobs.tables import Base
from tests.services import Services, fresh_database


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


def test_batch_metadata_that_is_not_an_object_is_kept_under_value(services: Services) -> None:
    """Migration 0008: multipart bulk runs once stored ``metadata=[1]``, which then broke every
    read of the tenant's batches; such values are wrapped so every batch reads back."""
    from sqlalchemy import create_engine, text

    with fresh_database(services.pg_admin_url) as url:
        upgrade(url, revision="0007")
        engine = create_engine(url)
        with engine.begin() as conn:
            tenant = conn.execute(
                text(
                    "INSERT INTO tenants (id, name, webhook_secret) VALUES (gen_random_uuid(), 'old', 'x') RETURNING id"
                )
            )
            values = {"t": tenant.scalar_one()}
            conn.execute(
                text(
                    "INSERT INTO batches (id, tenant_id, total, priority, metadata) VALUES "
                    "(gen_random_uuid(), :t, 0, 2, '[1]'), (gen_random_uuid(), :t, 0, 2, '123'), "
                    "(gen_random_uuid(), :t, 0, 2, '{\"a\": 1}')"
                ),
                values,
            )
        upgrade(url)
        with engine.connect() as conn:
            found = sorted(str(m) for m in conn.execute(text("SELECT metadata FROM batches")).scalars())
        engine.dispose()
    assert found == ["{'a': 1}", "{'value': 123}", "{'value': [1]}"]


def test_queue_tables_are_vacuumed_by_rows_changed(sessions: sessionmaker[Session]) -> None:
    """Migration 0012: ``jobs`` and ``webhook_deliveries`` carry their own autovacuum settings
    (10,000 rows changed, not 20 % of the table); other tables keep the server's."""
    from sqlalchemy import text

    with sessions() as session:
        options = dict(
            session.execute(
                text(
                    "SELECT relname, reloptions FROM pg_class WHERE relname IN "
                    "('jobs', 'webhook_deliveries', 'batches') AND relkind = 'r'"
                )
            ).all()
        )
    by_rows = {"autovacuum_vacuum_scale_factor=0", "autovacuum_vacuum_threshold=10000",
               "autovacuum_analyze_scale_factor=0", "autovacuum_analyze_threshold=10000"}  # fmt: skip
    for table in ("jobs", "webhook_deliveries"):
        assert by_rows <= set(options[table])
    assert options["batches"] is None
