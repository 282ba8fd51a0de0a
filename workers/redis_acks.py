"""A worker whose Redis link drops while it acknowledges a message must not go deaf.

kombu's Redis ``QoS.ack`` removes the message from Redis's unacked index, then frees the
prefetch slot it held in this process. When the first step fails (the link timed out), the
second never runs: with ``worker_prefetch_multiplier = 1`` the consumer then believes it
still holds a message and never asks Redis for another, for as long as the process lives
(found by tests/faults/test_hosts.py: alive, healthy to a probe, and idle).

Here the slot is freed whatever Redis said. The message stays in Redis's unacked index and
comes back after the visibility timeout; by then its jobs are finished in PostgreSQL, and a
claim of finished jobs is a no-op (the record decides, not the broker).
"""

from __future__ import annotations

import logging
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

log = logging.getLogger("mlq.worker")


def _ack(self: Any, delivery_tag: Any) -> None:
    try:
        self._remove_from_indices(delivery_tag).execute()
    except Exception as exc:  # kombu logs "Couldn't ack"; this process takes messages again
        log.warning("ack of %s not sent to Redis (%s); it comes back after the visibility timeout", delivery_tag, exc)
        raise
    finally:
        virtual.QoS.ack(self, delivery_tag)  # free the prefetch slot in this process


def free_slots_on_failed_acks() -> None:
    """Patch kombu's Redis QoS once (the Sentinel transport uses the same class)."""
    if getattr(kombu_redis.QoS.ack, "__module__", "") != __name__:
        kombu_redis.QoS.ack = _ack  # type: ignore[method-assign]
