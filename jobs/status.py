"""The one status enum, shared by the API, the tables and the workers."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    queued = "queued"  # committed and (re)published; waiting for a worker to claim it
    running = "running"  # claimed by a worker holding a lease; attempt was incremented
    succeeded = "succeeded"  # output stored by the attempt that claimed it
    failed = "failed"  # error_code and error_message say why; final
    cancelled = "cancelled"  # cancelled by its tenant before it finished; final

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled})
