"""Errors of mlq. A retryable error sends the job back to the queue; a
permanent one fails it at once with a message its user can act on.

Service code raises these; the API's one exception handler (``producer/errors.py``) makes
the HTTP answer: InvalidField 422, Conflict 409, OverLimit 429 with Retry-After."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class MlqError(Exception):
    """Root of every error mlq raises on purpose."""

    code = "internal_error"


class NotConfigured(MlqError):
    """A setting this command needs is missing (MLQ_DATABASE_URL, MLQ_REDIS_URL...)."""

    code = "not_configured"


class Conflict(MlqError):
    """The request contradicts what is stored: an Idempotency-Key used before for something else,
    or a finished job or bulk run asked to cancel."""

    code = "conflict"


class OverLimit(MlqError):
    """Over a limit of the tenant or the deployment for now (jobs a minute, active jobs,
    downloads): retry after ``retry_after_s``."""

    code = "over_limit"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = max(1, int(retry_after_s))


class PermanentError(MlqError):
    """Retrying cannot help: the job fails now."""

    code = "permanent_error"


class InvalidInput(PermanentError):
    """The job's input cannot be processed (undecodable, over a limit, wrong shape)."""

    code = "invalid_input"


class InvalidField(InvalidInput):
    """A request's field breaks a rule, named where it is: ``loc`` such as
    ``("body", "input", "text")`` or ``("query", "limit")``. Nothing was stored.
    ``errors``: every field refused at once (pydantic's error dicts), when there are several."""

    def __init__(self, loc: Sequence[Any], message: str, *, errors: Sequence[dict[str, Any]] = ()) -> None:
        super().__init__(message)
        self.loc = tuple(loc)
        self.errors = list(errors) or [{"loc": self.loc, "msg": message, "type": "value_error"}]

    @classmethod
    def of(cls, errors: Sequence[Mapping[str, Any]], *prefix: Any) -> InvalidField:
        """Pydantic's errors (``ValidationError.errors()``) for a part of the request at ``prefix``."""
        placed = [{**e, "loc": (*prefix, *e.get("loc", ()))} for e in errors]
        first = placed[0] if placed else {"loc": prefix, "msg": "invalid"}
        return cls(first["loc"], str(first["msg"]), errors=placed)


class ModelError(PermanentError):
    """The model raised on this input; the worker goes on with other jobs."""

    code = "model_error"


class ModelNotConfigured(PermanentError):
    """The models file has no model for this kind."""

    code = "model_not_configured"


class TimedOut(PermanentError):
    """The job passed its kind's soft time limit and was stopped between steps."""

    code = "timed_out"


class Cancelled(PermanentError):
    """The job was cancelled while it ran and stopped between steps (it ends ``cancelled``)."""

    code = "cancelled"


class RetryableError(MlqError):
    """A transient failure: the job goes back to the queue for another attempt."""

    code = "retryable_error"


class OutOfMemory(RetryableError):
    """The device ran out of memory on this batch."""

    code = "out_of_memory"


class StoreUnavailable(RetryableError):
    """PostgreSQL could not be reached or the transaction failed transiently."""

    code = "store_unavailable"


class BrokerUnavailable(RetryableError):
    """Redis could not be reached to publish a wake-up message."""

    code = "broker_unavailable"
