"""Fair share between tenants: where a new job goes in its kind's queue.

A claim takes a kind's queued jobs by priority, then by ``fair_vt`` (jobs/lifecycle/_claiming.py). That
number is a virtual time stamped once, when the job is stored (start-time fair queuing):

- A tenant's next jobs of a kind and priority continue after its last queued one there, or
  start at the queue's head when it has none queued: ``max(its last, head) + i / share``.
  A tenant that arrives while another has 20,000 jobs queued therefore gets every other
  place from the head on (shares 1:1), three places in four with shares 3:1, and a tenant's
  jobs keep their order. An idle tenant holds no places, so nothing waits for it.
- A bulk run of a tenant that already has jobs queued there is interleaved with them, from
  its first queued one, at half steps: two runs of one tenant take turns. While they overlap
  the tenant holds up to twice its places (the older run is not restamped).
- Priorities still win: each priority is its own queue.

Single jobs are stamped in the statement that stores them (jobs/store.py, ``places``),
bulk runs through :func:`run_places` before their COPY. Nothing already queued is ever
restamped, so stamping costs a few index probes per tenant, kind and priority of a
statement, and a claim reads the jobs it takes, whatever the number of tenants and the
depth of the queue (tests/integration/test_fairness.py checks the plans).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable

from sqlalchemy import text
from sqlalchemy.orm import Session

# the first and last queued places of a tenant at (kind, priority), the queue's head there
# (retried jobs excluded: they are claimed by id), and the tenant's share
_PLACES_SQL = text(
    """
    SELECT k.kind,
        (SELECT min(j.fair_vt) FROM jobs j WHERE j.tenant_id = :tenant_id AND j.kind = k.kind
            AND j.priority = :priority AND j.status = 'queued') AS first,
        (SELECT max(j.fair_vt) FROM jobs j WHERE j.tenant_id = :tenant_id AND j.kind = k.kind
            AND j.priority = :priority AND j.status = 'queued') AS last,
        (SELECT min(j.fair_vt) FROM jobs j WHERE j.kind = k.kind AND j.priority = :priority
            AND j.status = 'queued' AND j.attempt = 0) AS head,
        (SELECT t.share FROM tenants t WHERE t.id = :tenant_id) AS share
    FROM unnest(CAST(:kinds AS text[])) AS k(kind)
    """
)

Places = Callable[[str, int], float]  # (kind, the job's index among the run's jobs of that kind) -> fair_vt


def run_places(session: Session, *, tenant_id: uuid.UUID, priority: int, kinds: Iterable[str]) -> Places:
    """The places of a bulk run's jobs, by kind: after the queue's head, or interleaved with
    the tenant's own queued jobs of that kind and priority."""
    starts: dict[str, tuple[float, float, float]] = {}  # kind -> (base, offset, step)
    rows = session.execute(_PLACES_SQL, {"tenant_id": tenant_id, "priority": priority, "kinds": sorted(kinds)})
    for kind, first, _last, head, share in rows:
        step = 1.0 / max(1, share or 1)
        starts[kind] = (first, 0.5, step) if first is not None else (head or 0.0, 1.0, step)

    def place(kind: str, index: int) -> float:
        base, offset, step = starts.get(kind, (0.0, 1.0, 1.0))
        return base + (index + offset) * step

    return place
