"""The runner's hooks (workers/hooks.py) on the real PostgreSQL: when each is called, and what
the claim holds then."""

import contextlib
from collections.abc import Iterator

from sqlalchemy.orm import Session, sessionmaker

from tests.integration.test_runner import rows, runner, submit
from workers.hooks import Call, Claim, Hook
from workers.runner import Runner

__all__ = ["runner"]  # the fixture


class Recording(Hook):
    """A hook that writes down when it was called and what the claim held then."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []

    def started(self, claim: Claim) -> None:
        self.events.append(("started", len(claim.jobs)))

    @contextlib.contextmanager
    def _around(self, claim: Claim) -> Iterator[None]:
        self.events.append(("entered", len(claim.outcomes)))
        yield
        self.events.append(("left", len(claim.written)))

    def around(self, claim: Claim) -> contextlib.AbstractContextManager[None]:
        return self._around(claim)

    def around_call(self, claim: Claim, call: Call) -> contextlib.AbstractContextManager[None]:
        self.events.append(("call", len(call.jobs)))
        return contextlib.nullcontext()

    def before_store(self, claim: Claim) -> None:
        self.events.append(("before_store", len(claim.outcomes)))

    def ended(self, claim: Claim) -> None:
        self.events.append(("ended", len(claim.written)))


def test_a_hook_sees_each_claim_at_each_point_of_the_pipeline(runner: Runner, sessions: sessionmaker[Session]) -> None:
    """started (jobs claimed, nothing run) → around entered → around_call (the good input's
    model call) → before_store (outcomes made, the bad input's too) → around left (results
    written) → ended."""
    recording = Recording()
    runner.hooks.hooks.append(recording)
    ids = submit(sessions, "text-classification", [{"text": "a good text"}, {}])
    report = runner.run(kind="text-classification", job_ids=ids)
    assert (report.claimed, report.succeeded, report.failed) == (2, 1, 1)
    assert recording.events == [
        ("started", 2), ("entered", 0), ("call", 1), ("before_store", 2), ("left", 2), ("ended", 2)
    ]  # fmt: skip
    assert [r.status for r in rows(sessions, ids)] == ["succeeded", "failed"]
    again = runner.run(kind="text-classification", job_ids=ids)  # nothing left to claim
    assert again.claimed == 0 and len(recording.events) == 6  # a claim of no jobs reaches no hook
