"""What runs around the runner's pipeline (claim → prepare → predict → store), as hooks, the
way dramatiq's middleware wraps ``process_message``. The pipeline (workers/runner.py) knows
only the ``Hook`` interface; what each hook does lives beside it:

- ``KeepLeases`` (workers/watch.py): the claim's leases renewed while it runs;
- ``WatchCalls`` (workers/watch.py): each model call's time limits and cancel requests;
- ``ClaimMetrics`` (workers/results.py): queue wait and claim size when a claim starts, its
  jobs counted, timed and logged once it is stored;
- ``HoldBeforeStore`` (below): the fault tests' pause between predict and store.

A hook sees every claim that holds jobs, at five points: ``started`` (claimed, nothing run
yet), ``around`` (a context around prepare, predict and store), ``around_call`` (a context
around each model call), ``before_store`` (predictions made) and ``ended`` (results written;
not reached when the claim raised). Order: as listed in the runner, contexts entered in that
order and left in reverse.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from jobs import lifecycle
from jobs.modelsfile import ModelSpec
from models.base import StopSignal
from workers.outcomes import Done, Failed


@dataclass
class Claim:
    """One claim on its way through the pipeline, as the runner and its hooks see it."""

    spec: ModelSpec  # the kind's model, as the models file sets it
    jobs: Sequence[lifecycle.Claimed]
    files: dict[tuple[uuid.UUID, str], str] = field(default_factory=dict)  # (job, artifact name) -> stored uri
    started_s: float = field(default_factory=time.perf_counter)
    # how its attempts ended so far (a process that must exit records these first), then as written
    outcomes: list[Done | Failed] = field(default_factory=list)
    retry: list[tuple[lifecycle.Claimed, str]] = field(default_factory=list)  # given back, with the reason
    written: set[uuid.UUID] = field(default_factory=set)  # outcomes stored; the others a newer attempt owns

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def model(self) -> str:
        return self.spec.model

    def elapsed_s(self) -> float:
        return time.perf_counter() - self.started_s


@dataclass
class Call:
    """One model call of a claim: its jobs and the signal that stops it between steps."""

    jobs: Sequence[lifecycle.Claimed]
    interruptible: bool
    stop: StopSignal = field(default_factory=StopSignal)


class Hook:
    """Override what a hook needs; each default does nothing."""

    def started(self, claim: Claim) -> None:
        """The claim holds its jobs; nothing has run."""

    def around(self, claim: Claim) -> AbstractContextManager[None]:
        """A context around the claim's prepare, predict and store."""
        return nullcontext()

    def around_call(self, claim: Claim, call: Call) -> AbstractContextManager[None]:
        """A context around one model call of the claim."""
        return nullcontext()

    def before_store(self, claim: Claim) -> None:
        """Predictions made (``claim.outcomes``), nothing stored."""

    def ended(self, claim: Claim) -> None:
        """The claim's results are written (``claim.written``)."""


class Hooks:
    """The hooks of one runner, called in order."""

    def __init__(self, hooks: Sequence[Hook]) -> None:
        self.hooks = list(hooks)

    def started(self, claim: Claim) -> None:
        for hook in self.hooks:
            hook.started(claim)

    @contextmanager
    def around(self, claim: Claim) -> Iterator[None]:
        with ExitStack() as stack:
            for hook in self.hooks:
                stack.enter_context(hook.around(claim))
            yield

    @contextmanager
    def around_call(self, claim: Claim, call: Call) -> Iterator[None]:
        with ExitStack() as stack:
            for hook in self.hooks:
                stack.enter_context(hook.around_call(claim, call))
            yield

    def before_store(self, claim: Claim) -> None:
        for hook in self.hooks:
            hook.before_store(claim)

    def ended(self, claim: Claim) -> None:
        for hook in self.hooks:
            hook.ended(claim)


# tests/faults only: while the file this names exists, a claim waits between predict and store
HOLD_BEFORE_STORE = os.environ.get("MLQ_FAULT_HOLD_BEFORE_STORE", "")


class HoldBeforeStore(Hook):
    """The fault tests' hold: while ``path`` exists, a claim waits (predictions made, nothing
    stored), having written its job ids to ``path``.held."""

    def __init__(self, path: str) -> None:
        self.path = path

    def before_store(self, claim: Claim) -> None:
        if os.path.exists(self.path):
            Path(f"{self.path}.part").write_text("\n".join(str(c.id) for c in claim.jobs))
            os.replace(f"{self.path}.part", f"{self.path}.held")
            while os.path.exists(self.path):
                time.sleep(0.05)
