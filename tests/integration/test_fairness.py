"""Fair share between tenants on the real PostgreSQL (issue #20): the places jobs get when they
are stored, and the order claims take them in; and claims and stamps that read only what
they take, with 1,000 tenants of 1,000 queued jobs each."""

from __future__ import annotations

import json
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from jobs import batches, lifecycle, store
from jobs.batches import BatchItem
from jobs.ids import new_id
from jobs.settings import Settings
from tests.conftest import sessions_of, stack_of_its_own
from tests.services import Services

KIND = "text-classification"


@pytest.fixture
def db(settings: Settings, services: Services) -> Iterator[sessionmaker[Session]]:
    """A database of its own: a claim takes any queued job of its kind, other tests' too."""
    with stack_of_its_own(settings, services) as own, sessions_of(own) as sessions:
        yield sessions


def tenant(sessions: sessionmaker[Session], name: str, *, share: int = 1) -> uuid.UUID:
    tenant_id = uuid.uuid4()
    with sessions.begin() as session:
        session.execute(
            text("INSERT INTO tenants (id, name, webhook_secret, share) VALUES (:id, :name, 'x', :share)"),
            {"id": tenant_id, "name": name, "share": share},
        )
    return tenant_id


def singles(sessions: sessionmaker[Session], tenant_id: uuid.UUID, n: int, *, priority: int = 2) -> list[uuid.UUID]:
    """``n`` single jobs stored in one statement, as the API's intake stores them."""
    new = [
        store.NewJob(kind=KIND, model="m", profile="demo", input={"text": f"t{i}"}, priority=priority, metadata={},
                     max_attempts=3)
        for i in range(n)
    ]  # fmt: skip
    with sessions.begin() as session:
        return [row.id for row, _ in store.insert_jobs(session, jobs=[(tenant_id, job) for job in new])]


def bulk_run(sessions: sessionmaker[Session], tenant_id: uuid.UUID, n: int, *, priority: int = 2) -> list[uuid.UUID]:
    """A bulk run of ``n`` lines, stored with COPY as the API stores one."""
    with sessions.begin() as session:
        batch = batches.insert_batch(session, tenant_id=tenant_id, priority=priority, metadata={})
        assert batch is not None
        ids = [new_id() for _ in range(n)]
        with batches.copy_jobs(session, batch=batch, kinds=[KIND]) as write:
            for line, job_id in enumerate(ids, start=1):
                write(BatchItem(job_id, line, f"c{line}", KIND, "m", "demo", json.dumps({"text": "x"}), 3))
        batch.total = n
    return ids


def claims(sessions: sessionmaker[Session], *, size: int = 20, limit: int = 10**6) -> list[list[lifecycle.Claimed]]:
    """Claims of ``size`` as workers make them (each message a wake-up), until nothing is left
    (a claim's jobs are one model call: their order within it means nothing)."""
    taken: list[list[lifecycle.Claimed]] = []
    while sum(map(len, taken)) < limit:
        with sessions.begin() as session:
            got = lifecycle.claim(session, job_ids=[], kind=KIND, worker="w", lease_s=60, fill_to=size)
        if not got:
            break
        taken.append(got)
    return taken


def claim_all(sessions: sessionmaker[Session], *, size: int = 20, limit: int = 10**6) -> list[lifecycle.Claimed]:
    return [job for claim in claims(sessions, size=size, limit=limit) for job in claim]


def test_a_small_tenant_takes_every_other_place_beside_a_big_run(db: sessionmaker[Session]) -> None:
    big, small = tenant(db, "big"), tenant(db, "small")
    bulk_run(db, big, 3000)
    claim_all(db, limit=400)  # the big run is under way
    mine = set(bulk_run(db, small, 100))
    taken = claims(db)
    last = max(n for n, claim in enumerate(taken) if any(c.tenant_id == small for c in claim))
    assert last <= 10, f"the small run's last job was in claim {last}; alone: the 5th of 20, fair: the 10th"
    assert sum(c.id in mine for claim in taken[:10] for c in claim) >= 95


def test_shares_3_to_1_give_3_to_1(db: sessionmaker[Session]) -> None:
    heavy, light = tenant(db, "heavy", share=3), tenant(db, "light")
    singles(db, heavy, 1500)
    singles(db, light, 1500)
    counts = Counter(c.tenant_id for c in claim_all(db, limit=800))
    assert 2.7 <= counts[heavy] / counts[light] <= 3.3, counts


def test_priorities_win_over_fairness_and_a_tenants_order_is_kept(db: sessionmaker[Session]) -> None:
    first, second = tenant(db, "first"), tenant(db, "second")
    bulk = singles(db, first, 300, priority=2)
    urgent = singles(db, second, 50, priority=5)
    later = singles(db, first, 100, priority=2)
    taken = claims(db, size=10)
    assert {c.id for claim in taken[:5] for c in claim} == set(urgent)  # the higher priority first, whoever asked
    claim_of = {c.id: n for n, claim in enumerate(taken) for c in claim}
    sent = [claim_of[i] for i in bulk + later]
    assert sent == sorted(sent)  # one tenant's jobs in the order it sent them


def test_two_runs_of_one_tenant_take_turns(db: sessionmaker[Session]) -> None:
    owner = tenant(db, "owner")
    one = set(bulk_run(db, owner, 500))
    two = set(bulk_run(db, owner, 100))
    order = [c.id for c in claim_all(db)]
    assert len({i for i in order[:200] if i in two}) >= 95 and len(one | two) == len(order) == 600


def test_nothing_is_claimed_twice_by_workers_claiming_at_once(db: sessionmaker[Session]) -> None:
    ids = set()
    for name in ("a", "b", "c"):
        ids |= set(singles(db, tenant(db, name), 400))
    taken: list[uuid.UUID] = []
    lock = threading.Lock()

    def worker() -> None:
        got = [c.id for c in claim_all(db, size=16)]
        with lock:
            taken.extend(got)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(taken) == len(set(taken)) == len(ids) and set(taken) == ids


def rows_read(plan: dict[str, Any]) -> int:
    """Rows that the plan's scans of ``jobs`` returned, over all their loops."""
    own = plan.get("Actual Rows", 0) * plan.get("Actual Loops", 1) if plan.get("Relation Name") == "jobs" else 0
    return int(own) + sum(rows_read(child) for child in plan.get("Plans", []))


def test_claims_and_stamps_read_what_they_take_with_1000_tenants_of_1000_queued(db: sessionmaker[Session]) -> None:
    with db.begin() as session:
        session.execute(
            text("""
            INSERT INTO tenants (id, name, webhook_secret)
            SELECT gen_random_uuid(), 'many-' || t, 'x' FROM generate_series(1, 1000) t""")
        )
        session.execute(
            text("""
            INSERT INTO jobs (id, tenant_id, kind, model, profile, status, priority, input, metadata, attempt,
                              max_attempts, fair_vt)
            SELECT gen_random_uuid(), t.id, :kind, 'm', 'demo', 'queued', 2, '{}', '{}', 0, 3, n
            FROM tenants t CROSS JOIN generate_series(1, 1000) n WHERE t.name LIKE 'many-%'"""),
            {"kind": KIND},
        )
    some = tenant(db, "probe")
    for analyzed in (False, True):  # a fresh table without statistics, then with them
        with db.begin() as session:
            if analyzed:
                session.execute(text("ANALYZE jobs"))
            claim = session.execute(
                text(f"EXPLAIN (ANALYZE, FORMAT JSON) {lifecycle.CLAIM_SQL.text}"),
                {"ids": "{}", "kind": KIND, "worker": "w", "lease_s": 60, "fill_to": 64},
            ).scalar_one()[0]["Plan"]
            assert rows_read(claim) <= 3 * 64 + 10, json.dumps(claim)[:2000]
            stamp = session.execute(
                text(f"EXPLAIN (ANALYZE, FORMAT JSON) {store._INSERT_JOBS_SQL.text}"),
                {"rows": json.dumps([{"id": str(uuid.uuid4()), "tenant_id": str(some), "kind": KIND, "model": "m",
                                      "profile": "demo", "priority": 2, "input": {}, "metadata": {},
                                      "max_attempts": 3, "idempotency_key": None, "webhook_url": None, "n": 0}])},
            ).scalar_one()[0]["Plan"]  # fmt: skip
            assert rows_read(stamp) <= 10, json.dumps(stamp)[:2000]
            session.rollback()


def test_the_cli_sets_a_share_and_keeps_the_other_limits(settings: Settings, services: Services) -> None:
    import subprocess
    import sys
    from pathlib import Path

    from tests.conftest import process_env

    mlq = str(Path(sys.executable).with_name("mlq"))
    with stack_of_its_own(settings, services) as own, sessions_of(own) as sessions:
        tenant_id = tenant(sessions, "weighted")
        env = process_env(own)
        subprocess.run([mlq, "keys", "limits", "--tenant", "weighted", "--jobs-per-minute", "50"], env=env, check=True)
        done = subprocess.run(
            [mlq, "keys", "limits", "--tenant", "weighted", "--jobs-per-minute", "50", "--share", "3"],
            env=env, check=True, capture_output=True, text=True,
        )  # fmt: skip
        refused = subprocess.run([mlq, "keys", "limits", "--tenant", "weighted", "--share", "0"], env=env)
        with sessions() as session:
            share, per_minute = session.execute(
                text("SELECT share, jobs_per_minute FROM tenants WHERE id = :id"), {"id": tenant_id}
            ).one()
    assert (share, per_minute) == (3, 50) and "share=3" in done.stdout
    assert refused.returncode != 0  # a share is at least 1
