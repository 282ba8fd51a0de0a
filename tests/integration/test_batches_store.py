"""Bulk-run store functions on the real PostgreSQL: COPY insert, counts, results streamed in pieces."""

import json
import uuid

from sqlalchemy.orm import Session, sessionmaker

from jobs import batches, keys
from jobs.batches import BatchItem
from jobs.ids import new_id


def test_results_stream_in_input_order_one_fetch_at_a_time(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        tenant = keys.ensure_tenant(session, name=f"t-{uuid.uuid4().hex[:8]}")
        other = keys.ensure_tenant(session, name=f"t-{uuid.uuid4().hex[:8]}")
        batch = batches.insert_batch(session, tenant_id=tenant, priority=2, metadata={})
        with batches.copy_jobs(session, batch=batch, kinds=["embedding"]) as write:
            for line in range(1, 26):
                write(BatchItem(new_id(), line, f"c{line}", "embedding", "m", "demo", json.dumps({"text": "x"}), 3))
        batch_id = batch.id
    with sessions() as session:
        pieces = list(batches.stream_results(session, tenant_id=tenant, batch_id=batch_id, rows_per_fetch=10))
        foreign = list(batches.stream_results(session, tenant_id=other, batch_id=batch_id, rows_per_fetch=10))
        tally = batches.counts(session, batch_ids=[batch_id])[batch_id]
    # a bounded fetch per piece: the API's memory does not grow with the batch
    assert [p.count("\n") for p in pieces] == [10, 10, 5]
    lines = [json.loads(line) for p in pieces for line in p.splitlines()]
    assert [r["custom_id"] for r in lines] == [f"c{i}" for i in range(1, 26)]
    assert {r["status"] for r in lines} == {"queued"} and all(r["output"] is None for r in lines)
    assert foreign == []  # another tenant reads nothing of it
    assert (tally.total, tally.queued) == (25, 25)
