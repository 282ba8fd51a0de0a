"""Group commit of single jobs (producer.intake) on the real PostgreSQL and Redis: one
INSERT and one message for a group, and each submission still gets its own answer."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from jobs import keys, store
from jobs.artifacts import LocalArtifactStore, StoredArtifact
from jobs.errors import Conflict, InvalidField, OverLimit
from jobs.queues import queue_name
from jobs.settings import Settings
from jobs.tables import Artifact, Job
from producer.intake import Intake, Submission
from producer.publish import Publisher
from producer.ratelimit import RateLimiter
from tests.services import Services, fresh_redis_db


@pytest.fixture
def lonely(settings: Settings, services: Services) -> Iterator[Settings]:
    """Settings on a Redis database no worker reads, so published messages stay to be read."""
    with fresh_redis_db(services.redis_base_url) as redis_url:
        yield Settings(**{**settings.model_dump(), "redis_url": redis_url})


@pytest.fixture
def intake(lonely: Settings, sessions: sessionmaker[Session], tmp_path: Path) -> Iterator[Intake]:
    publisher, limiter = Publisher(lonely), RateLimiter(lonely.require_redis_url())
    try:
        yield Intake(
            settings=lonely,
            sessions=sessions,
            publisher=publisher,
            limiter=limiter,
            artifacts=LocalArtifactStore(tmp_path),
        )
    finally:
        publisher.close()
        limiter.close()


def principal(sessions: sessionmaker[Session], **limits: int) -> keys.Principal:
    with sessions.begin() as session:
        tenant_id = keys.ensure_tenant(session, name=f"t-{uuid.uuid4().hex[:8]}")
    return keys.Principal(
        tenant_id=tenant_id, tenant_name="t", key_id=uuid.uuid4(), scopes=frozenset({"submit"}), **limits
    )


def submission(who: keys.Principal, text: str, **job: object) -> Submission:
    fields: dict[str, object] = dict(
        kind="embedding", model="m", profile="demo", input={"text": text}, priority=5, metadata={}, max_attempts=3
    )
    return Submission(job=store.NewJob(**{**fields, **job}), principal=who)  # type: ignore[arg-type]


def published_ids(settings: Settings, kind: str = "embedding") -> list[list[str]]:
    """The job ids of each message waiting in ``kind``'s queue (every priority list)."""
    client = redis.Redis.from_url(settings.require_redis_url())
    messages = [m for key in client.keys(f"{queue_name(kind)}*") for m in client.lrange(key, 0, -1)]
    return [json.loads(base64.b64decode(json.loads(m)["body"]))[0][0] for m in messages]


def stored(sessions: sessionmaker[Session], ids: list[uuid.UUID]) -> dict[uuid.UUID, Job]:
    with sessions() as session:
        return {j.id: j for j in session.scalars(select(Job).where(Job.id.in_(ids)))}


def test_a_group_is_one_insert_and_one_message(
    intake: Intake, lonely: Settings, sessions: sessionmaker[Session]
) -> None:
    who = principal(sessions)
    group = [submission(who, f"text {i}") for i in range(5)]
    answers = intake.commit(group)
    assert [a[1] for a in answers if isinstance(a, tuple)] == [True] * 5
    assert [a[0].id for a in answers if isinstance(a, tuple)] == [s.job.id for s in group]  # in order
    rows = stored(sessions, [s.job.id for s in group])
    assert sorted(r.input["text"] for r in rows.values()) == [f"text {i}" for i in range(5)]
    assert {r.status for r in rows.values()} == {"queued"}
    assert published_ids(lonely) == [[str(s.job.id) for s in group]]  # one message naming all five


def test_a_value_postgresql_refuses_fails_only_its_own_job(
    intake: Intake, lonely: Settings, sessions: sessionmaker[Session]
) -> None:
    """Validation refuses NUL characters; this checks the net behind it: a row PostgreSQL
    refuses gets a 422 of its own, and the rest of its group is stored and published."""
    who = principal(sessions)
    group = [submission(who, "fine"), submission(who, "bad \x00 text"), submission(who, "also fine")]
    answers = intake.commit(group)
    refused = answers[1]
    assert isinstance(refused, InvalidField)  # the API's handler answers it 422, naming where
    [error] = refused.errors
    assert error["loc"] == ("body",) and "cannot be stored" in error["msg"]
    assert all(isinstance(a, tuple) and a[1] for a in (answers[0], answers[2]))
    assert set(stored(sessions, [s.job.id for s in group])) == {group[0].job.id, group[2].job.id}
    assert sorted(i for m in published_ids(lonely) for i in m) == sorted([str(group[0].job.id), str(group[2].job.id)])


def test_the_minute_limit_refuses_the_rest_of_a_group(
    intake: Intake, lonely: Settings, sessions: sessionmaker[Session]
) -> None:
    who = principal(sessions, jobs_per_minute=3)
    group = [submission(who, f"t{i}") for i in range(5)]
    answers = intake.commit(group)
    assert [isinstance(a, tuple) for a in answers] == [True, True, True, False, False]
    for refused in answers[3:]:
        assert isinstance(refused, OverLimit) and refused.retry_after_s >= 1  # 429 with Retry-After
        assert "jobs_per_minute=3" in str(refused)
    assert set(stored(sessions, [s.job.id for s in group])) == {s.job.id for s in group[:3]}
    again = intake.commit([submission(who, "later")])[0]  # the minute is used up: the next group too
    assert isinstance(again, OverLimit)


def test_the_active_quota_counts_the_group(intake: Intake, sessions: sessionmaker[Session]) -> None:
    who = principal(sessions, max_active_jobs_per_kind=2)
    answers = intake.commit([submission(who, "a"), submission(who, "b"), submission(who, "c")])
    assert [isinstance(a, tuple) for a in answers] == [True, True, False]
    refused = answers[2]
    assert isinstance(refused, OverLimit) and "max_active_jobs_per_kind=2" in str(refused)
    other_kind = intake.commit([submission(who, "d", kind="text-classification")])[0]
    assert isinstance(other_kind, tuple) and other_kind[1]  # the quota is per kind


def test_an_idempotency_key_repeated_in_one_group(
    intake: Intake, lonely: Settings, sessions: sessionmaker[Session]
) -> None:
    who = principal(sessions)
    first = submission(who, "once", idempotency_key="k-1")
    again = submission(who, "once", idempotency_key="k-1")
    other = submission(who, "not the same", idempotency_key="k-1")
    answers = intake.commit([first, again, other])
    created, replayed, conflict = answers
    assert isinstance(created, tuple) and created[1] and created[0].id == first.job.id
    assert isinstance(replayed, tuple) and not replayed[1] and replayed[0].id == first.job.id
    assert isinstance(conflict, Conflict)  # 409
    assert published_ids(lonely) == [[str(first.job.id)]]  # the job is published once
    later = intake.commit([submission(who, "once", idempotency_key="k-1")])[0]  # and in a later group
    assert isinstance(later, tuple) and not later[1] and later[0].id == first.job.id


def test_files_are_recorded_with_their_job(intake: Intake, sessions: sessionmaker[Session]) -> None:
    who = principal(sessions)
    with_file = submission(who, "x")
    with_file.files = [
        StoredArtifact(name="input-image", content_type="image/png", size_bytes=3, sha256="0" * 64, uri="file:///x")
    ]
    answers = intake.commit([with_file, submission(who, "y")])
    assert all(isinstance(a, tuple) and a[1] for a in answers)
    with sessions() as session:
        names = session.scalars(select(Artifact.name).where(Artifact.job_id == with_file.job.id)).all()
    assert names == ["input-image"]


def test_concurrent_submissions_share_commits_and_wake_ups(
    intake: Intake, lonely: Settings, sessions: sessionmaker[Session]
) -> None:
    """Through the event-loop side: what arrives while a commit is in flight waits for the next,
    and under load jobs share wake-up messages; every job is named by exactly one."""
    import asyncio

    who = principal(sessions)
    group = [submission(who, f"c{i}") for i in range(40)]

    async def submit_all() -> list[tuple[Job, bool]]:
        return await asyncio.gather(*(intake.accept(s) for s in group))

    answers = asyncio.run(submit_all())
    assert [row.id for row, created in answers if created] == [s.job.id for s in group]
    assert sum(intake.groups.values()) < len(group)  # some commits carried more than one job
    assert sum(size * n for size, n in intake.groups.items()) == len(group)
    messages = published_ids(lonely)
    assert sorted(i for m in messages for i in m) == sorted(str(s.job.id) for s in group)
    assert len(messages) <= sum(intake.groups.values())  # at most one per commit, fewer under load
