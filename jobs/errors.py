"""Errors of mlq. A retryable error sends the job back to the queue; a
permanent one fails it at once with a message its user can act on."""

from __future__ import annotations


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


class PermanentError(MlqError):
    """Retrying cannot help: the job fails now."""

    code = "permanent_error"


class InvalidInput(PermanentError):
    """The job's input cannot be processed (undecodable, over a limit, wrong shape)."""

    code = "invalid_input"


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
