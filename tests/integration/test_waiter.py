"""The long-poll waiter on the real PostgreSQL: a NOTIFY from a result write wakes the
subscribed request with the finished row, read once for everything woken together."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid

from sqlalchemy.orm import Session, sessionmaker

from jobs import keys, lifecycle, store
from jobs.tables import Job
from producer.waiter import Waiter


def test_a_finished_job_wakes_its_waiter_with_the_stored_row(
    database_url: str, sessions: sessionmaker[Session]
) -> None:
    with sessions.begin() as session:
        tenant = keys.ensure_tenant(session, name=f"w-{uuid.uuid4().hex[:8]}")
        jobs = [
            store.insert_job(session, tenant_id=tenant, job=store.NewJob(
                kind="embedding", model="m", profile="demo", input={"text": f"t{i}"}, priority=5,
                metadata={"n": i}, max_attempts=3,
            ))[0]
            for i in range(2)
        ]  # fmt: skip
        claimed = lifecycle.claim(session, job_ids=[j.id for j in jobs], kind="embedding", worker="w", lease_s=60)

    async def scenario() -> list[store.JobRow | None]:
        waiter = Waiter(database_url)
        waiter.start()
        try:
            await asyncio.wait_for(waiter.connected.wait(), timeout=10)
            with waiter.subscribe(jobs[0].id) as first, waiter.subscribe(jobs[1].id) as second:

                def finish() -> None:  # both in one write: one NOTIFY, one read
                    with sessions.begin() as session:
                        ok, bad = claimed
                        lifecycle.finish(session, outcomes=[
                            lifecycle.Outcome(job_id=ok.id, attempt=ok.attempt, output={"dimensions": 1}),
                            lifecycle.Outcome(job_id=bad.id, attempt=bad.attempt, error_code="model_error",
                                              error_message="boom"),
                        ])  # fmt: skip

                await asyncio.to_thread(finish)
                await asyncio.wait_for(asyncio.gather(first.event.wait(), second.event.wait()), timeout=10)
                assert first.row_of(uuid.uuid4()) is None  # another tenant gets no row
                return [first.row_of(tenant), second.row_of(tenant)]
        finally:
            await waiter.stop()

    rows = asyncio.run(scenario())
    with sessions() as session:
        for row in rows:
            assert row is not None
            stored = session.get(Job, row.id)
            assert stored is not None
            for name in (f.name for f in dataclasses.fields(store.JobRow)):
                assert getattr(row, name) == getattr(stored, name), name
    assert rows[0] is not None and rows[0].status == "succeeded" and rows[0].output == {"dimensions": 1}
    assert rows[1] is not None and rows[1].status == "failed" and rows[1].error_message == "boom"
