"""Per-tenant submission limits on the real API: jobs per minute (Redis) and active jobs per
kind (PostgreSQL), both 429 with Retry-After, nothing stored for a refused job."""

from __future__ import annotations

import subprocess
import time
import uuid

import redis
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from jobs.tables import Job, Tenant
from tests.conftest import MLQ, Api, create_key, process_env
from tests.services import Services, fresh_redis_db


def tenant_with_limits(api: Api, **limits: int) -> tuple[str, str]:
    tenant = f"limited-{uuid.uuid4().hex[:8]}"
    key = create_key(api.settings, tenant)
    options = [f"--{name.replace('_', '-')}={value}" for name, value in limits.items()]
    out = subprocess.run(
        [MLQ, "keys", "limits", "--tenant", tenant, *options],
        env=process_env(api.settings), capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert tenant in out.stdout
    return tenant, key


def stored(sessions: sessionmaker[Session], tenant: str) -> int:
    with sessions() as session:
        return session.execute(
            select(func.count()).select_from(Job).join(Tenant, Tenant.id == Job.tenant_id).where(Tenant.name == tenant)
        ).scalar_one()


def test_jobs_per_minute_answers_429_with_retry_after(
    api_without_workers: Api, sessions: sessionmaker[Session]
) -> None:
    tenant, key = tenant_with_limits(api_without_workers, jobs_per_minute=3)
    if time.time() % 60 > 50:  # keep the six requests inside one minute's window
        time.sleep(61 - time.time() % 60)
    with api_without_workers.client(key) as http:
        answers = [http.post("/v1/jobs", json={"kind": "embedding", "input": {"text": f"t{i}"}}) for i in range(6)]
    assert [a.status_code for a in answers] == [202, 202, 202, 429, 429, 429]
    refused = answers[3]
    assert "jobs_per_minute=3" in refused.json()["detail"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert stored(sessions, tenant) == 3  # nothing of the refused ones


def test_active_jobs_per_kind_answers_429_until_one_finishes(
    api_without_workers: Api, sessions: sessionmaker[Session]
) -> None:
    tenant, key = tenant_with_limits(api_without_workers, max_active_jobs_per_kind=2)
    with api_without_workers.client(key) as http:  # no worker reads this API's queues: jobs stay queued
        first, second = (
            http.post("/v1/jobs", json={"kind": "embedding", "input": {"text": f"a{i}"}}).json() for i in range(2)
        )
        over = http.post("/v1/jobs", json={"kind": "embedding", "input": {"text": "one too many"}})
        assert over.status_code == 429, over.text
        assert "max_active_jobs_per_kind=2" in over.json()["detail"] and over.headers["Retry-After"] == "5"
        other_kind = http.post("/v1/jobs", json={"kind": "text-classification", "input": {"text": "fine"}})
        assert other_kind.status_code == 202  # the quota is per kind
        bulk = http.post(
            "/v1/batches", json={"kind": "embedding", "items": [{"custom_id": "x", "input": {"text": "x"}}]}
        )
        assert bulk.status_code == 202  # bulk runs are not single jobs
        assert http.post(f"/v1/jobs/{first['id']}/cancel").json()["status"] == "cancelled"
        deadline = time.monotonic() + 5  # counts are taken again each second: a client retries as told
        while (
            again := http.post("/v1/jobs", json={"kind": "embedding", "input": {"text": "room"}})
        ).status_code == 429:
            assert time.monotonic() < deadline, again.text
            time.sleep(0.25)
        assert again.status_code == 202, again.text
        assert http.get(f"/v1/jobs/{second['id']}").json()["status"] == "queued"  # untouched by the cancel
    assert stored(sessions, tenant) == 5  # two, the other kind, the bulk item, the last one (429s store nothing)


def test_the_minute_counter_fails_open_when_redis_is_away() -> None:
    from producer.ratelimit import RateLimiter

    limiter = RateLimiter("redis://127.0.0.1:1/0")  # nothing listens on port 1
    try:
        for _ in range(3):  # over a limit of 1, yet accepted: the job is durable without Redis
            assert limiter.admit(tenant_id=uuid.uuid4(), jobs=1, per_minute=1) == (1, 0)
    finally:
        limiter.close()


def test_a_body_over_max_request_bytes_is_refused_before_it_is_read(api_without_workers: Api, key: str) -> None:
    with api_without_workers.client(key) as http:
        before = http.get("/v1/jobs", params={"limit": 200}).json()["data"]
        huge = {"kind": "embedding", "input": {"text": "x" * (3 << 20)}}
        answer = http.post("/v1/jobs", json=huge)
        assert answer.status_code == 413 and "max_request_bytes=2097152" in answer.text
        assert http.get("/v1/jobs", params={"limit": 200}).json()["data"] == before  # nothing stored


def test_minute_tokens_are_taken_in_blocks_and_every_process_together_stays_under_the_limit(
    services: Services,
) -> None:
    """Two API processes' limiters share one minute counter: a limit of 300 is taken in blocks
    of 3, so a third of the groups need Redis, and together they admit at most 300."""
    from producer.ratelimit import RateLimiter

    with fresh_redis_db(services.redis_base_url) as redis_url:
        first, second = RateLimiter(redis_url), RateLimiter(redis_url)
        tenant = uuid.uuid4()
        client = redis.Redis.from_url(redis_url)
        client.config_resetstat()
        if time.time() % 60 > 55:  # the run takes well under a second: start it inside one minute
            time.sleep(61 - time.time() % 60)
        try:
            admitted, minute = 0, int(time.time() // 60)
            for _ in range(200):  # 400 single-job groups, alternating processes, inside one minute
                for limiter in (first, second):
                    admitted += limiter.admit(tenant_id=tenant, jobs=1, per_minute=300)[0]
            incrby = client.info("commandstats").get("cmdstat_incrby", {}).get("calls", 0)
        finally:
            first.close()
            second.close()
    assert int(time.time() // 60) == minute, "the run straddled a minute: its count means nothing"
    assert 300 - 2 * 2 <= admitted <= 300  # each process may end holding up to block - 1 unspent
    assert incrby <= 300 // 3 + (400 - 300) + 4  # a block per 3 jobs while there is room, then one try per group
