"""Every change of a job's status, with what goes with it, in one place.

- claim: queued → running, with a lease the worker renews (``extend_leases``); ``claim_jobs``
  in a write of its own;
- finish: running → succeeded, failed or cancelled (a cancel asked while it ran); ``record``
  writes a claim's results whole (outcomes, files, jobs given back);
- give back: running → queued after a transient error, due again after a backoff, or
  failed with ``max_attempts_exceeded`` once every attempt is used (``give_back``); an
  expired lease is given back the same way (``expired_leases``), each lost attempt recorded
  in the job's history, the dead letter;
- cancel: a queued job, or a bulk run's queued items, → cancelled at once; running ones are
  asked to stop.

Every job that ends here passes through ``ended``: the API's long polls are woken (NOTIFY,
sent on commit) and the webhook outbox is written, in the transaction that ends it.

Writes from workers are fenced by attempt: a claim only takes ``queued`` rows, and a final
write only lands for the attempt that claimed the row, so a redelivered message can never
store a second result. Keyword-only beyond the session, free of HTTP and Celery.

The package's modules, one per change: ``_claiming``, ``_finishing``, ``_giving_back``,
``_cancelling``, ``_ending`` (what goes with every end) and ``_recording`` (a claim's results
together). Callers use the names below; ``claim_jobs`` and ``record`` take the sessions and
decide themselves whether their write is one statement (autocommit) or a transaction.
"""

from jobs.lifecycle._cancelling import cancel_batch, cancel_job
from jobs.lifecycle._claiming import CLAIM_SQL, Claimed, cancel_requested, claim, claim_jobs, extend_leases
from jobs.lifecycle._ending import NOTIFY_IDS_PER_MESSAGE, notify_finished
from jobs.lifecycle._finishing import Outcome, finish, outcome_rows
from jobs.lifecycle._giving_back import (
    LEASE_EXPIRED,
    RETRY_BASE_S,
    RETRY_MAX_S,
    GivenBack,
    Waiting,
    expired_leases,
    give_back,
)
from jobs.lifecycle._recording import record

__all__ = [
    "CLAIM_SQL", "LEASE_EXPIRED", "NOTIFY_IDS_PER_MESSAGE", "RETRY_BASE_S", "RETRY_MAX_S", "Claimed", "GivenBack",
    "Outcome", "Waiting", "cancel_batch", "cancel_job", "cancel_requested", "claim", "claim_jobs",
    "expired_leases", "extend_leases", "finish", "give_back", "notify_finished", "outcome_rows", "record",
]  # fmt: skip
