"""One backoff for every retry: exponential from a base, capped, with jitter.

Used by a task waiting out PostgreSQL, a result write retried while PostgreSQL restarts, a
webhook delivery retried, and (the same formula in SQL, ``jobs.lifecycle``) a job given back
after a transient error.
"""

from __future__ import annotations

import random


def backoff_s(tries: int, *, base_s: float, max_s: float, jitter: bool = True) -> float:
    """The pause before try ``tries + 1``: ``base_s`` doubled per earlier try (``tries`` from 0),
    at most ``max_s``, times a random 0.5-1.5 with ``jitter`` (so many retries spread out)."""
    pause_s = min(max_s, base_s * 2 ** max(0, tries))
    return pause_s * random.uniform(0.5, 1.5) if jitter else pause_s
