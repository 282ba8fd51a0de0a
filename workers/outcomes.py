"""How a job's attempt ended, as the runner holds it until the claim's results are written,
and how the runner tells the errors it meets apart."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError, OperationalError

from jobs import lifecycle
from jobs.kinds import KindSpec
from jobs.languages import unread
from jobs.schemas import Output, binary_fields
from models.base import Prediction

RESULT_NOT_STORABLE = "result_not_storable"  # error code when PostgreSQL refuses a result's values
STICKY_DEVICE_ERRORS = (  # CUDA errors after which the process's context cannot be used again
    "illegal memory access",
    "device-side assert",
    "unspecified launch failure",
    "misaligned address",
    "CUDA error: an illegal instruction",
    "uncorrectable ECC error",
)
T = TypeVar("T")
NOT_TEXT = frozenset({"id", "artifact", "url", "base64", "role", "language", "task"})  # input keys that are no prose


@dataclass
class Done:
    job: lifecycle.Claimed
    prediction: Prediction

    def outcome(self) -> lifecycle.Outcome:
        return lifecycle.Outcome(
            job_id=self.job.id, attempt=self.job.attempt, output=self.prediction.output, follow_up=self.job.follow_up
        )


@dataclass
class Failed:
    job: lifecycle.Claimed
    code: str
    message: str

    def outcome(self) -> lifecycle.Outcome:
        return lifecycle.Outcome(
            job_id=self.job.id,
            attempt=self.job.attempt,
            error_code=self.code,
            error_message=self.message,
            follow_up=self.job.follow_up,
        )


def texts_of(value: Any) -> Iterator[str]:
    """The prose in a job's input: its strings, but ids, file references and enum-like fields."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            if key not in NOT_TEXT:
                yield from texts_of(item)
    elif isinstance(value, list):
        for item in value:
            yield from texts_of(item)


def warn_unread(outcomes: list[Done | Failed], *, languages: list[str], model: str) -> None:
    """Say in each result whose input the model cannot read that it means little."""
    for o in outcomes:
        if not (isinstance(o, Done) and isinstance(o.prediction.output, Output)):
            continue
        if (warning := unread(texts_of(o.job.input), languages=languages, model=model)) is not None:
            o.prediction.output.warnings.append(warning)


def has_files(claimed: Sequence[lifecycle.Claimed], *, kind: KindSpec) -> bool:
    """Whether any of these stored inputs names a file (its location is then read)."""
    names = binary_fields(kind.input_model)
    return bool(names) and any(c.input.get(name) for c in claimed for name in names)


def cut_to_find_fault(together: Sequence[T], *, halves: bool) -> list[list[T]]:
    """Items that failed together, cut so that what can succeed does and only the culprit fails,
    each part tried again by the caller (and cut again if it fails again): in halves (a bisection:
    an out-of-memory call may fit at half the size; one refused row among hundreds is found in a
    few writes), or one item each (a model error: the culprit alone, in the fewest model runs)."""
    if halves:
        half = len(together) // 2
        return [list(together[:half]), list(together[half:])]
    return [[one] for one in together]


def validation_message(exc: ValidationError) -> str:
    return "; ".join(
        f"input.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" if e["loc"] else e["msg"] for e in exc.errors()
    )


def is_sticky_device_error(exc: BaseException) -> bool:
    text = str(exc)
    return any(marker in text for marker in STICKY_DEVICE_ERRORS)


def is_out_of_memory(exc: BaseException) -> bool:
    """torch.OutOfMemoryError (CUDA) or MemoryError, told apart without importing torch here."""
    return isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"


def is_transient_db_error(exc: BaseException) -> bool:
    return isinstance(exc, OperationalError) or (isinstance(exc, DBAPIError) and exc.connection_invalidated)


def release_memory() -> None:
    """Give an unloaded model's memory back (and the GPU cache, when torch uses CUDA)."""
    import gc
    import sys

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
