"""Retention on the real PostgreSQL (a database of its own: a prune removes every tenant's old
rows): old finished jobs go with their artifacts and outbox rows, nothing unfinished or recent
goes, a tenant's own retention wins, bulk runs go whole, and in small transactions."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from jobs import keys, store
from jobs.artifacts import LocalArtifactStore
from jobs.retention import Pruner
from jobs.settings import Settings
from tests.conftest import sessions_of, stack_of_its_own
from tests.services import Services
from workers.pruning import PruneSchedule


@pytest.fixture(scope="module")
def own_sessions(settings: Settings, services: Services) -> Iterator[sessionmaker[Session]]:
    with stack_of_its_own(settings, services) as own, sessions_of(own) as sessions:
        yield sessions


@pytest.fixture
def sessions(own_sessions: sessionmaker[Session]) -> sessionmaker[Session]:
    with own_sessions.begin() as session:
        session.execute(text("TRUNCATE tenants, jobs, batches, files CASCADE"))
    return own_sessions


def tenant(sessions: sessionmaker[Session], name: str, *, retention_days: int | None = None) -> uuid.UUID:
    with sessions.begin() as session:
        found = keys.ensure_tenant(session, name=name)
        if retention_days is not None:
            keys.set_tenant_limits(
                session, tenant=name, jobs_per_minute=None, max_active_jobs_per_kind=None, retention_days=retention_days
            )
    return found


def add_jobs(
    sessions: sessionmaker[Session],
    tenant_id: uuid.UUID,
    *,
    n: int = 1,
    status: str = "succeeded",
    age_days: float = 40,
    batch_id: uuid.UUID | None = None,
) -> list[uuid.UUID]:
    """Jobs created and (when final) finished ``age_days`` ago."""
    with sessions.begin() as session:
        rows = session.execute(
            text(
                """
                INSERT INTO jobs (id, tenant_id, kind, model, profile, status, priority, input, metadata, attempt,
                                  max_attempts, batch_id, batch_index, created_at, updated_at, finished_at)
                SELECT gen_random_uuid(), :tenant, 'embedding', 'm', 'demo', CAST(:status AS varchar), 5,
                       '{"text": "x"}', '{}', 1, 3, :batch, i, t, t,
                       CASE WHEN :status IN ('succeeded', 'failed', 'cancelled') THEN t END
                FROM generate_series(1, :n) AS i,
                     LATERAL (SELECT now() - make_interval(days => :days) + i * interval '1 ms' AS t) AS at
                RETURNING id
                """
            ),
            {"tenant": tenant_id, "status": status, "days": age_days, "batch": batch_id, "n": n},
        )
        return list(rows.scalars())


def with_artifact(sessions: sessionmaker[Session], store_: LocalArtifactStore, job_id: uuid.UUID) -> Path:
    stored = store_.put(job_id=job_id, name="image.png", data=b"png", content_type="image/png")
    with sessions.begin() as session:
        store.add_artifacts(session, rows=[(job_id, stored)])
    return Path(stored.uri.removeprefix("file://"))


def with_delivery(
    sessions: sessionmaker[Session], tenant_id: uuid.UUID, *, job_id: uuid.UUID | None = None,
    batch_id: uuid.UUID | None = None, status: str = "delivered",
) -> None:  # fmt: skip
    with sessions.begin() as session:
        session.execute(
            text(
                "INSERT INTO webhook_deliveries (id, tenant_id, job_id, batch_id, url, status, attempts) "
                "VALUES (gen_random_uuid(), :t, :j, :b, 'https://example.com/hook', :s, 1)"
            ),
            {"t": tenant_id, "j": job_id, "b": batch_id, "s": status},
        )


def count(sessions: sessionmaker[Session], sql: str, **params: object) -> int:
    with sessions() as session:
        return int(session.execute(text(f"SELECT count(*) FROM {sql}"), params).scalar_one())


def pruner(sessions: sessionmaker[Session], tmp_path: Path, **options: int) -> Pruner:
    options.setdefault("retention_days", 30)
    return Pruner(sessions, artifacts=LocalArtifactStore(tmp_path), **options)


def test_old_finished_jobs_go_with_their_artifacts_and_outbox_rows(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    artifacts = LocalArtifactStore(tmp_path)
    t = tenant(sessions, "old-and-new")
    old = (
        add_jobs(sessions, t, n=3) + add_jobs(sessions, t, status="failed") + add_jobs(sessions, t, status="cancelled")
    )
    old_files = [with_artifact(sessions, artifacts, job_id) for job_id in old[:2]]
    for job_id in old[:3]:
        with_delivery(sessions, t, job_id=job_id, status="failed" if job_id == old[0] else "delivered")
    recent = add_jobs(sessions, t, age_days=2)
    recent_file = with_artifact(sessions, artifacts, recent[0])
    unfinished = add_jobs(sessions, t, status="queued") + add_jobs(sessions, t, status="running")
    hook_pending = add_jobs(sessions, t)
    with_delivery(sessions, t, job_id=hook_pending[0], status="pending")

    done = pruner(sessions, tmp_path).prune()

    assert (done.jobs, done.artifacts, done.webhook_deliveries, done.batches) == (5, 2, 3, 0)
    with sessions() as session:
        left = set(session.execute(text("SELECT id FROM jobs")).scalars())
    assert left == {*recent, *unfinished, *hook_pending}
    assert count(sessions, "artifacts") == 1 and count(sessions, "webhook_deliveries") == 1
    assert not any(f.exists() for f in old_files) and recent_file.read_bytes() == b"png"
    again = pruner(sessions, tmp_path).prune()
    assert again.jobs == 0 and again.transactions == 2  # one look for jobs, one for uploads: nothing more


def test_a_tenants_own_retention_wins(sessions: sessionmaker[Session], tmp_path: Path) -> None:
    forever = tenant(sessions, "keeps-forever", retention_days=0)
    week = tenant(sessions, "keeps-a-week", retention_days=7)
    season = tenant(sessions, "keeps-a-season", retention_days=90)
    default = tenant(sessions, "keeps-the-default")
    kept = add_jobs(sessions, forever, age_days=400) + add_jobs(sessions, season, age_days=40)
    kept += add_jobs(sessions, default, age_days=10)
    pruned = add_jobs(sessions, week, age_days=10) + add_jobs(sessions, season, age_days=100)
    pruned += add_jobs(sessions, default, age_days=40)

    done = pruner(sessions, tmp_path).prune()

    assert done.jobs == len(pruned) == 3
    with sessions() as session:
        assert set(session.execute(text("SELECT id FROM jobs")).scalars()) == set(kept)
    nothing = pruner(sessions, tmp_path, retention_days=0).prune()  # the deployment keeps all: only
    assert nothing.jobs == 0  # tenants with their own retention would lose some, and they have none left


def bulk_run(
    sessions: sessionmaker[Session], tenant_id: uuid.UUID, *, input_file: uuid.UUID | None = None, age_days: float = 40
) -> uuid.UUID:
    """A run made through OpenAI's Batch API: its row, its two result files, and a sent webhook."""
    batch_id = uuid.uuid4()
    with sessions.begin() as session:
        session.execute(
            text(
                "INSERT INTO batches (id, tenant_id, total, priority, metadata, input_file_id, created_at) "
                "VALUES (:b, :t, 0, 2, '{}', :f, now() - make_interval(days => :days))"
            ),
            {"b": batch_id, "t": tenant_id, "f": input_file, "days": age_days},
        )
        session.execute(
            text(
                "INSERT INTO files (id, tenant_id, purpose, filename, batch_id, part) "
                "SELECT gen_random_uuid(), :t, 'batch_output', p || '.jsonl', :b, p "
                "FROM unnest(ARRAY['output', 'error']) p"
            ),
            {"b": batch_id, "t": tenant_id},
        )
    with_delivery(sessions, tenant_id, batch_id=batch_id)
    return batch_id


def uploaded(
    sessions: sessionmaker[Session], artifacts: LocalArtifactStore, tenant_id: uuid.UUID, *, age_days: float = 41
) -> Path:
    file_id = uuid.uuid4()
    stored = artifacts.put(job_id=file_id, name="content", data=b'{"custom_id": "a"}\n', content_type="text/plain")
    with sessions.begin() as session:
        session.execute(
            text(
                "INSERT INTO files (id, tenant_id, purpose, filename, bytes, uri, created_at) "
                "VALUES (:f, :t, 'batch', 'in.jsonl', 19, :uri, now() - make_interval(days => :days))"
            ),
            {"f": file_id, "t": tenant_id, "uri": stored.uri, "days": age_days},
        )
    return Path(stored.uri.removeprefix("file://"))


def batch_ids(sessions: sessionmaker[Session]) -> set[uuid.UUID]:
    with sessions() as session:
        return set(session.execute(text("SELECT id FROM batches")).scalars())


def test_a_bulk_run_stays_whole_until_all_of_it_is_past_retention(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    artifacts = LocalArtifactStore(tmp_path)
    t = tenant(sessions, "bulk")
    shared_input = uploaded(sessions, artifacts, t)
    input_id = uuid.UUID(shared_input.parent.name)
    own_input = uploaded(sessions, artifacts, t)
    done_long_ago = bulk_run(sessions, t, input_file=uuid.UUID(own_input.parent.name))
    add_jobs(sessions, t, n=25, batch_id=done_long_ago)
    with_artifact(sessions, artifacts, add_jobs(sessions, t, batch_id=done_long_ago)[0])
    still_running = bulk_run(sessions, t, input_file=input_id)
    add_jobs(sessions, t, n=5, batch_id=still_running)
    last_item = add_jobs(sessions, t, status="queued", batch_id=still_running)
    finished_lately = bulk_run(sessions, t, input_file=input_id)
    add_jobs(sessions, t, n=5, batch_id=finished_lately)
    add_jobs(sessions, t, age_days=3, batch_id=finished_lately)

    done = pruner(sessions, tmp_path, batch_rows=10).prune()

    assert (done.batches, done.jobs, done.artifacts, done.files) == (1, 26, 1, 3)  # 2 result files, 1 input
    assert done.webhook_deliveries == 1  # the run's own
    assert batch_ids(sessions) == {still_running, finished_lately}
    assert count(sessions, "jobs WHERE batch_id = :b", b=done_long_ago) == 0
    assert count(sessions, "files WHERE batch_id IS NOT NULL") == 4  # the kept runs' result files, all there
    assert count(sessions, "jobs WHERE batch_id = :b", b=still_running) == 6  # none of its results went
    assert not own_input.exists() and shared_input.exists()

    with sessions.begin() as session:  # the last item finishes, long ago: the run goes, whole
        session.execute(
            text("UPDATE jobs SET status = 'succeeded', finished_at = now() - interval '31 days' WHERE id = :id"),
            {"id": last_item[0]},
        )
    later = pruner(sessions, tmp_path).prune()
    assert (later.batches, later.jobs, later.files) == (1, 6, 2)  # the input file: another run still names it
    assert batch_ids(sessions) == {finished_lately} and shared_input.exists()


def test_pruning_goes_in_small_transactions(sessions: sessionmaker[Session], tmp_path: Path) -> None:
    t = tenant(sessions, "many")
    add_jobs(sessions, t, n=35)
    done = pruner(sessions, tmp_path, batch_rows=10).prune()
    assert (done.jobs, done.transactions) == (35, 5)  # 10 + 10 + 10 + 5, each its own transaction; then uploads


def pruned_jobs_metric() -> float:
    return REGISTRY.get_sample_value("mlq_pruned_total", {"what": "jobs"}) or 0.0


def test_the_reconcilers_schedule_prunes_once_per_interval(sessions: sessionmaker[Session], tmp_path: Path) -> None:
    t = tenant(sessions, "scheduled")
    add_jobs(sessions, t, n=3)
    schedule = PruneSchedule(pruner(sessions, tmp_path), every_s=3600)
    pruned_before = pruned_jobs_metric()
    schedule.tick()
    assert schedule.thread is not None
    schedule.thread.join(timeout=30)
    first = schedule.thread
    assert count(sessions, "jobs") == 0
    assert pruned_jobs_metric() == pruned_before + 3  # the reconciler's /metrics counts what went
    assert (REGISTRY.get_sample_value("mlq_last_prune_timestamp_seconds") or 0) > time.time() - 60
    add_jobs(sessions, t, n=3)
    schedule.tick()  # not due for an hour
    assert schedule.thread is first and count(sessions, "jobs") == 3


def test_an_upload_no_run_names_goes_after_the_retention(sessions: sessionmaker[Session], tmp_path: Path) -> None:
    artifacts = LocalArtifactStore(tmp_path)
    t = tenant(sessions, "uploads")
    unused_old = uploaded(sessions, artifacts, t)
    unused_new = uploaded(sessions, artifacts, t, age_days=3)
    used_old = uploaded(sessions, artifacts, t)
    run = bulk_run(sessions, t, input_file=uuid.UUID(used_old.parent.name), age_days=1)
    add_jobs(sessions, t, n=2, batch_id=run, age_days=1)

    done = pruner(sessions, tmp_path).prune()

    assert (done.files, done.jobs, done.batches) == (1, 0, 0)
    assert not unused_old.exists() and unused_new.exists() and used_old.exists()
    with sessions() as session:
        left = set(session.execute(text("SELECT id FROM files WHERE batch_id IS NULL")).scalars())
    assert left == {uuid.UUID(unused_new.parent.name), uuid.UUID(used_old.parent.name)}


def test_a_tenant_goes_back_to_the_deployments_retention(sessions: sessionmaker[Session], tmp_path: Path) -> None:
    t = tenant(sessions, "was-forever", retention_days=0)
    old = add_jobs(sessions, t, n=2)
    assert pruner(sessions, tmp_path).prune().jobs == 0
    with sessions.begin() as session:
        keys.set_tenant_limits(
            session, tenant="was-forever", jobs_per_minute=None, max_active_jobs_per_kind=None, retention_days=-1
        )
        assert session.execute(text("SELECT retention_days FROM tenants WHERE id = :t"), {"t": t}).scalar() is None
    assert pruner(sessions, tmp_path).prune().jobs == len(old)
