"""tests/services.py: each run takes a Redis database of its own, and one a killed run left
behind (no lock, nothing but what test runs write) is taken back, not skipped for ever.
On a Redis server of this test's own, so no other run's database is touched."""

from __future__ import annotations

from pathlib import Path

import redis

from mlq.embedded import start_redis
from tests.services import LOCK_KEY, fresh_redis_db, hold


def test_a_database_a_killed_run_left_is_taken_back_and_one_in_use_is_not(tmp_path: Path) -> None:
    server = start_redis(tmp_path / "redis", persist=False)
    base = server.url.rsplit("/", 1)[0]
    try:
        db = {n: redis.Redis.from_url(f"{base}/{n}") for n in range(1, 16)}
        for n in range(1, 16):
            db[n].set("someone-elses-key", "x")  # every database in use by something else ...
        db[15].delete("someone-elses-key")
        db[15].set(LOCK_KEY, "a live run", ex=60)  # ... 15 by a live run ...
        db[9].delete("someone-elses-key")
        db[9].lpush("mlq.embedding", "a wake-up nobody will read")  # ... 9 left by a killed run
        db[9].set("_kombu.binding.mlq.embedding", "x")
        with fresh_redis_db(base) as url:
            assert url.endswith("/9") and db[9].llen("mlq.embedding") == 0  # emptied, then claimed
            db[9].flushdb()
            hold(url)  # a test that flushes its database claims it again
            assert db[9].get(LOCK_KEY) is not None
        assert db[15].get(LOCK_KEY) == b"a live run" and db[3].get("someone-elses-key") == b"x"
    finally:
        server.stop()
