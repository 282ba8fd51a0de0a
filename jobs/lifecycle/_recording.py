"""A claim's results in one write: its outcomes, the files its jobs made, and the jobs it gives
back. Written as one statement when that is all there is, else in one transaction."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy.orm import Session, sessionmaker

from jobs import store
from jobs.artifacts import StoredArtifact
from jobs.db import writing
from jobs.lifecycle._ending import NOTIFY_IDS_PER_MESSAGE
from jobs.lifecycle._finishing import Outcome, finish
from jobs.lifecycle._giving_back import give_back


def record(
    sessions: sessionmaker[Session],
    *,
    outcomes: Sequence[Outcome],
    artifacts: Sequence[tuple[uuid.UUID, StoredArtifact]] = (),
    given_back: Sequence[tuple[uuid.UUID, int]] = (),
    reason: str = "",
) -> list[uuid.UUID]:
    """Finish ``outcomes``, record the ``artifacts`` of those written, and give back the
    ``given_back`` (job id, attempt) pairs for ``reason``, together. Returns the ids finished
    (one missing was taken over by a newer attempt, or cancelled).

    The finish statement carries its own NOTIFY; alone (no files, nothing given back, no
    webhook or bulk-run bookkeeping to follow, one NOTIFY's worth of ids) it commits on its own.
    """
    alone = (
        not artifacts
        and not given_back
        and len(outcomes) <= NOTIFY_IDS_PER_MESSAGE
        and not any(o.follow_up for o in outcomes)
    )
    with writing(sessions, one_statement=alone) as session:
        written = finish(session, outcomes=outcomes)
        kept = set(written)
        store.add_artifacts(session, rows=[(job_id, a) for job_id, a in artifacts if job_id in kept])
        if given_back:
            give_back(session, job_ids=[i for i, _ in given_back], attempts=[a for _, a in given_back], reason=reason)
    return written
