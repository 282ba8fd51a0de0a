"""Store functions on the real PostgreSQL: idempotency, fenced claims and writes, tenancy."""

import uuid

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from jobs import keys, lifecycle, store
from jobs.status import JobStatus
from jobs.tables import Job


def new_job(**overrides: object) -> store.NewJob:
    fields: dict[str, object] = dict(
        kind="embedding", model="m", profile="demo", input={"text": "hi"}, priority=5, metadata={}, max_attempts=3
    )
    fields.update(overrides)
    return store.NewJob(**fields)  # type: ignore[arg-type]


@pytest.fixture
def tenant(sessions: sessionmaker[Session]) -> uuid.UUID:
    with sessions.begin() as session:
        return keys.ensure_tenant(session, name=f"t-{uuid.uuid4().hex[:8]}")


def test_keys_authenticate_until_revoked(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        key, _ = keys.create_api_key(session, tenant="acme", scopes=["read"])
    with sessions() as session:
        principal = keys.authenticate(session, key=key)
        assert principal is not None and principal.tenant_name == "acme"
        assert principal.scopes == {"read"}
        assert keys.authenticate(session, key=key[:-1] + ("A" if key[-1] != "A" else "B")) is None
        assert keys.authenticate(session, key="not-a-key") is None
    with sessions.begin() as session:
        assert keys.revoke_api_key(session, prefix=key.split("_")[1])
    with sessions() as session:
        assert keys.authenticate(session, key=key) is None


def test_idempotency_key_returns_the_first_job(sessions: sessionmaker[Session], tenant: uuid.UUID) -> None:
    with sessions.begin() as session:
        first, created1 = store.insert_job(session, tenant_id=tenant, job=new_job(idempotency_key="k1"))
        second, created2 = store.insert_job(session, tenant_id=tenant, job=new_job(idempotency_key="k1"))
        third, _ = store.insert_job(session, tenant_id=tenant, job=new_job())
        fourth, _ = store.insert_job(session, tenant_id=tenant, job=new_job())
    assert (created1, created2) == (True, False)
    assert first.id == second.id and third.id != fourth.id  # no key: always a new job


def test_claim_is_fenced_and_the_stale_attempt_cannot_write(sessions: sessionmaker[Session], tenant: uuid.UUID) -> None:
    with sessions.begin() as session:
        job, _ = store.insert_job(session, tenant_id=tenant, job=new_job())
    with sessions.begin() as session:
        claimed = lifecycle.claim(session, job_ids=[job.id], kind="embedding", worker="w1", lease_s=30)
        again = lifecycle.claim(session, job_ids=[job.id], kind="embedding", worker="w2", lease_s=30)
        wrong_kind = lifecycle.claim(session, job_ids=[job.id], kind="chat", worker="w3", lease_s=30)
    assert [c.attempt for c in claimed] == [1] and again == [] and wrong_kind == []
    with sessions.begin() as session:
        stale = lifecycle.finish(session, outcomes=[lifecycle.Outcome(job_id=job.id, attempt=2, output={"x": 1})])
        written = lifecycle.finish(session, outcomes=[lifecycle.Outcome(job_id=job.id, attempt=1, output={"x": 2})])
        twice = lifecycle.finish(session, outcomes=[lifecycle.Outcome(job_id=job.id, attempt=1, output={"x": 3})])
    assert (stale, written, twice) == ([], [job.id], [])
    with sessions() as session:
        row = store.get_job(session, tenant_id=tenant, job_id=job.id)
    assert row is not None and row.status == "succeeded" and row.output == {"x": 2} and row.worker == "w1"
    assert row.finished_at is not None and row.lease_expires_at is None


def test_failure_and_release(sessions: sessionmaker[Session], tenant: uuid.UUID) -> None:
    with sessions.begin() as session:
        a, _ = store.insert_job(session, tenant_id=tenant, job=new_job())
        b, _ = store.insert_job(session, tenant_id=tenant, job=new_job(max_attempts=1))
    with sessions.begin() as session:
        lifecycle.claim(session, job_ids=[a.id, b.id], kind="embedding", worker="w", lease_s=30)
        lifecycle.give_back(session, job_ids=[a.id, b.id], attempts=[1, 1], reason="out_of_memory: try again")
    with sessions() as session:
        ra = store.get_job(session, tenant_id=tenant, job_id=a.id)
        rb = store.get_job(session, tenant_id=tenant, job_id=b.id)
    assert ra is not None and ra.status == "queued" and ra.attempt == 1
    assert rb is not None and rb.status == "failed" and rb.error_code == "max_attempts_exceeded"


def test_tenants_see_only_their_jobs(sessions: sessionmaker[Session], tenant: uuid.UUID) -> None:
    with sessions.begin() as session:
        other = keys.ensure_tenant(session, name=f"other-{uuid.uuid4().hex[:6]}")
        job, _ = store.insert_job(session, tenant_id=tenant, job=new_job())
    with sessions.begin() as session:
        assert store.get_job(session, tenant_id=other, job_id=job.id) is None
        assert lifecycle.cancel_job(session, tenant_id=other, job_id=job.id) is None
        assert store.list_jobs(session, tenant_id=other)[0] == []
        still = store.get_job(session, tenant_id=tenant, job_id=job.id)
        assert still is not None and still.status == "queued"


def test_cancel_queued_is_immediate_and_running_ends_cancelled(
    sessions: sessionmaker[Session], tenant: uuid.UUID
) -> None:
    with sessions.begin() as session:
        queued, _ = store.insert_job(session, tenant_id=tenant, job=new_job())
        running, _ = store.insert_job(session, tenant_id=tenant, job=new_job())
        lifecycle.claim(session, job_ids=[running.id], kind="embedding", worker="w", lease_s=30)
    with sessions.begin() as session:
        cancelled = lifecycle.cancel_job(session, tenant_id=tenant, job_id=queued.id)
        asked = lifecycle.cancel_job(session, tenant_id=tenant, job_id=running.id)
        assert cancelled is not None and cancelled.status == "cancelled"
        assert asked is not None and asked.status == "running" and asked.cancel_requested_at is not None
    with sessions.begin() as session:
        assert lifecycle.claim(session, job_ids=[queued.id], kind="embedding", worker="w", lease_s=30) == []
        lifecycle.finish(session, outcomes=[lifecycle.Outcome(job_id=running.id, attempt=1, output={"x": 1})])
    with sessions() as session:
        row = store.get_job(session, tenant_id=tenant, job_id=running.id)
    assert row is not None and row.status == "cancelled" and row.output is None


def test_list_pages_with_cursor_and_filters(sessions: sessionmaker[Session], tenant: uuid.UUID) -> None:
    with sessions.begin() as session:
        ids = [store.insert_job(session, tenant_id=tenant, job=new_job())[0].id for _ in range(5)]
        store.insert_job(session, tenant_id=tenant, job=new_job(kind="text-classification"))
    seen: list[uuid.UUID] = []
    cursor = None
    with sessions() as session:
        while True:
            page, cursor = store.list_jobs(session, tenant_id=tenant, kind="embedding", limit=2, cursor=cursor)
            seen += [j.id for j in page]
            if cursor is None:
                break
        queued = store.list_jobs(session, tenant_id=tenant, status=JobStatus.queued, limit=50)[0]
        with pytest.raises(ValueError, match="cursor"):
            store.list_jobs(session, tenant_id=tenant, cursor="garbage")
    assert sorted(seen) == sorted(ids) and len(seen) == 5
    assert len(queued) == 6


def test_batched_finish_writes_each_row_once(sessions: sessionmaker[Session], tenant: uuid.UUID) -> None:
    with sessions.begin() as session:
        ids = [store.insert_job(session, tenant_id=tenant, job=new_job())[0].id for _ in range(50)]
    with sessions.begin() as session:
        claimed = lifecycle.claim(session, job_ids=ids, kind="embedding", worker="w", lease_s=30)
    with sessions.begin() as session:
        written = lifecycle.finish(
            session,
            outcomes=[
                lifecycle.Outcome(job_id=c.id, attempt=c.attempt, output={"n": i})
                if i % 2
                else lifecycle.Outcome(job_id=c.id, attempt=c.attempt, error_code="invalid_input", error_message="bad")
                for i, c in enumerate(claimed)
            ],
        )
    assert len(written) == 50
    with sessions() as session:
        counts = dict(
            session.execute(select(Job.status, func.count()).where(Job.id.in_(ids)).group_by(Job.status)).all()
        )
    assert counts == {"succeeded": 25, "failed": 25}


def test_finish_wakes_long_polls_with_one_notification(
    sessions: sessionmaker[Session], tenant: uuid.UUID, database_url: str
) -> None:
    import psycopg

    from jobs.db import NOTIFY_CHANNEL, libpq_url

    with sessions.begin() as session:
        jobs = [store.insert_job(session, tenant_id=tenant, job=new_job())[0] for _ in range(3)]
    with psycopg.connect(libpq_url(database_url), autocommit=True) as listener:
        listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
        with sessions.begin() as session:
            claimed = lifecycle.claim(session, job_ids=[j.id for j in jobs], kind="embedding", worker="w", lease_s=30)
            written = lifecycle.finish(
                session, outcomes=[lifecycle.Outcome(job_id=c.id, attempt=c.attempt, output={"x": 1}) for c in claimed]
            )
        [note] = list(listener.notifies(timeout=5, stop_after=1))
    assert note.channel == NOTIFY_CHANNEL and set(note.payload.split(",")) == {str(j.id) for j in jobs}
    assert sorted(written) == sorted(j.id for j in jobs)


def test_job_rows_carry_the_same_values_as_the_orm_row(sessions: sessionmaker[Session], tenant: uuid.UUID) -> None:
    """insert_jobs answers with what it was given and the table's defaults (JobRow.queued), and an
    Idempotency-Key's replay with the earlier row (JobRow.of): each must be the row as stored."""
    import dataclasses

    with sessions.begin() as session:
        row, created = store.insert_job(
            session, tenant_id=tenant, job=new_job(metadata={"m": "1"}, webhook_url="https://example.com/h")
        )
    with sessions() as session:
        job = session.get(Job, row.id)
        assert created and job is not None
        for name in (f.name for f in dataclasses.fields(store.JobRow)):
            assert getattr(row, name) == getattr(job, name), name
    with sessions.begin() as session:
        [(first, made), (again, replayed)] = store.insert_jobs(
            session, jobs=[(tenant, new_job(idempotency_key="k-rows")), (tenant, new_job(idempotency_key="k-rows"))]
        )
    assert (made, replayed) == (True, False) and again == first  # the same key twice in one group
    with sessions() as session:
        job = session.get(Job, first.id)
        assert job is not None
        for name in (f.name for f in dataclasses.fields(store.JobRow)):
            assert getattr(again, name) == getattr(job, name), name


def plan_nodes(plan: dict[str, object]) -> list[dict[str, object]]:
    """Every node of an EXPLAIN (FORMAT JSON) plan, subplans and CTEs included."""
    children = plan.get("Plans") or []
    assert isinstance(children, list)
    return [plan, *(node for child in children for node in plan_nodes(child))]


@pytest.mark.parametrize("statistics", ["none", "stale"])
def test_a_claim_reads_rows_for_its_batch_not_for_the_queue(
    sessions: sessionmaker[Session], tenant: uuid.UUID, statistics: str
) -> None:
    """With 3,000 jobs queued, claiming 32 (a message of 8 ids filling up) touches tens of rows, with
    no statistics (a fresh table) or stale ones (analyzed while the queue was short). Before,
    the planner scanned the partial index of queued jobs for the ids and semi-joined the whole
    queue against the batch: 17 ms and 97,000 rows compared per claim at 3,200 queued."""
    import json

    from sqlalchemy import text

    kind = f"plan-{uuid.uuid4().hex[:8]}"  # its own queue: other tests' jobs do not count
    queued = 3000
    with sessions.begin() as session:
        early = [r.id for r, _ in store.insert_jobs(session, jobs=[(tenant, new_job(kind=kind)) for _ in range(20)])]
    if statistics == "stale":
        with sessions() as session:
            session.connection(execution_options={"isolation_level": "AUTOCOMMIT"}).exec_driver_sql("ANALYZE jobs")
    with sessions.begin() as session:
        ids = [r.id for r, _ in store.insert_jobs(session, jobs=[(tenant, new_job(kind=kind)) for _ in range(queued)])]
        lifecycle.claim(session, job_ids=ids[:64], kind=kind, worker="w", lease_s=30)  # some running too
    params = {"ids": ids[-8:], "kind": kind, "worker": "w2", "lease_s": 30, "fill_to": 32}
    with sessions() as session:  # rolled back: EXPLAIN ANALYZE runs the UPDATE
        [[plan]] = session.execute(text("EXPLAIN (ANALYZE, FORMAT JSON) " + lifecycle.CLAIM_SQL.text), params).one()
        session.rollback()
        claimed = session.execute(lifecycle.CLAIM_SQL, params).all()
        session.rollback()
    nodes = plan_nodes(plan["Plan"] if isinstance(plan, dict) else json.loads(plan)[0]["Plan"])
    touched = {
        f"{n['Node Type']} {n.get('Index Name', '')}".strip(): int(n["Actual Rows"]) * int(n["Actual Loops"])
        + int(n.get("Rows Removed by Filter", 0))
        + int(n.get("Rows Removed by Join Filter", 0))
        for n in nodes
    }
    assert {r.id for r in claimed} == set(early + ids[64:76])  # the queue's head, not the message's ids
    assert max(touched.values()) <= 100, touched


def test_a_message_whose_jobs_were_taken_still_claims_a_full_batch(
    sessions: sessionmaker[Session], tenant: uuid.UUID
) -> None:
    """Under load most of a message's jobs were already filled into other claims: only those
    still queued count towards the batch, so the claim is whole (before: 32 minus the ids
    named, whether queued or not; claims averaged 20 jobs with a backlog of 1,000)."""
    kind = f"fill-{uuid.uuid4().hex[:8]}"
    with sessions.begin() as session:
        ids = [r.id for r, _ in store.insert_jobs(session, jobs=[(tenant, new_job(kind=kind)) for _ in range(60)])]
    with sessions.begin() as session:
        taken = lifecycle.claim(session, job_ids=ids[:16], kind=kind, worker="w1", lease_s=30)
        claimed = lifecycle.claim(session, job_ids=ids[:20], kind=kind, worker="w2", lease_s=30, fill_to=32)
        rest = lifecycle.claim(session, job_ids=[], kind=kind, worker="w3", lease_s=30, fill_to=32)
    assert len(taken) == 16
    assert len(claimed) == 32 and {c.id for c in claimed} >= set(ids[16:20])
    assert len(rest) == 12 and not {c.id for c in rest} & {c.id for c in claimed + taken}
