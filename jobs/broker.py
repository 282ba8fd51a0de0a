"""Celery configuration shared by the publishing API and the consuming workers.

Plain values, no Celery import: the producer builds a light Celery app from
this to publish, the workers build theirs to consume, and both agree.
"""

from __future__ import annotations

from typing import Any

from jobs.redisconn import broker_transport_options, broker_url
from jobs.settings import Settings

VISIBILITY_TIMEOUT_S = 3 * 3600  # above the longest time limit; the Postgres lease decides ownership


def celery_config(settings: Settings) -> dict[str, Any]:
    return {
        "broker_url": broker_url(settings.require_redis_url()),  # a Sentinel URL follows the master
        "task_serializer": "json",
        "accept_content": ["json"],  # a pickled message is refused, never run
        "result_serializer": "json",
        "result_backend": None,  # PostgreSQL is the record, not Celery
        "task_ignore_result": True,
        "task_acks_late": True,  # ack after the result is committed
        "task_reject_on_worker_lost": True,  # a killed pool process gives its message back
        "worker_prefetch_multiplier": 1,
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": settings.publish_timeout_s,
        "broker_transport_options": {
            "visibility_timeout": VISIBILITY_TIMEOUT_S,
            "socket_timeout": settings.publish_timeout_s,
            "socket_connect_timeout": settings.publish_timeout_s,
            **broker_transport_options(settings, timeout_s=settings.publish_timeout_s),  # Sentinel's master name
        },
        "task_publish_retry": True,
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0.05,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        "task_create_missing_queues": True,
        "worker_send_task_events": True,
        "task_send_sent_event": False,
    }
