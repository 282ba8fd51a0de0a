"""Publishing to the real Redis: the message names job ids, never the input."""

import json
import uuid

import redis

from jobs.queues import queue_name, task_name
from jobs.settings import Settings
from producer.publish import Publisher
from tests.services import Services, fresh_redis_db


def test_message_carries_only_job_ids(settings: Settings, services: Services) -> None:
    with fresh_redis_db(services.redis_base_url) as redis_url:  # no worker reads this one
        check_message(Settings(**{**settings.model_dump(), "redis_url": redis_url}))


def check_message(settings: Settings) -> None:
    client = redis.Redis.from_url(settings.require_redis_url())
    kind = "text2text-generation"
    publisher = Publisher(settings)
    ids = [uuid.uuid4(), uuid.uuid4()]
    assert publisher.publish(kind=kind, job_ids=ids, priority=9)
    publisher.close()
    keys = client.keys(f"{queue_name(kind)}*")
    assert len(keys) == 1
    [raw] = client.lrange(keys[0], 0, -1)
    message = json.loads(raw)
    assert message["headers"]["task"] == task_name(kind)
    assert message["content-type"] == "application/json"
    import base64

    args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
    assert args == [[str(i) for i in ids]] and kwargs == {}
    client.delete(*keys)


def test_unreachable_broker_returns_false_quickly(settings: Settings) -> None:
    import time

    broken = Settings(**{**settings.model_dump(), "redis_url": "redis://127.0.0.1:1/0", "publish_timeout_s": 0.5})
    publisher = Publisher(broken)
    started = time.monotonic()
    assert publisher.publish(kind="embedding", job_ids=[uuid.uuid4()], priority=5) is False
    assert time.monotonic() - started < 10
