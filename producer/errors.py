"""How the API answers a refusal: the one place that turns errors into HTTP status codes and
bodies, and the bodies' shapes as the OpenAPI document shows them.

- A refusal of the request's content is a 422 whose ``detail`` is a list of
  ``{loc, msg, type, input?}``: where, which rule, and at most a short excerpt of what was
  sent. The excerpt is always renderable: long text is cut, lone surrogates are escaped,
  NaN and infinities are named, objects and arrays are described, never echoed.
- A value PostgreSQL refuses (``DataError``: a NUL, a number out of range) is a 422 too:
  retrying cannot help. Only a lost or refused connection is a 503 with ``Retry-After``.
- Every other refusal is ``{"detail": "<what is wrong and what to do>"}``.

Error bodies are written with every non-ASCII character escaped, so no value a client sent
can make the answer itself fail.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Sequence
from typing import Any

import psycopg
from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy.exc import DataError, DBAPIError, InterfaceError, InternalError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route

from jobs.errors import Conflict, InvalidField, OverLimit

log = logging.getLogger("mlq.api")

EXCERPT_CHARS = 80  # of a rejected string, echoed in a 422
MSG_CHARS = 500  # of one error message
LOC_KEY_CHARS = 64  # of one key in an error's location
MAX_ERRORS = 20  # listed in one 422
UNPROCESSABLE = status.HTTP_422_UNPROCESSABLE_CONTENT


class SafeJSONResponse(JSONResponse):
    """JSON with non-ASCII escaped: a lone surrogate or any other string renders."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def cut(text: str, limit: int = EXCERPT_CHARS) -> str:
    """``text`` made safe to echo: at most ``limit`` characters, lone surrogates escaped."""
    shown = text[:limit].encode("utf-8", "backslashreplace").decode("utf-8")
    return shown if len(text) <= limit else f"{shown}… ({len(text)} characters)"


def excerpt(value: Any) -> Any:
    """What a 422 shows of a rejected value: short, and renderable as JSON whatever it was."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if value.bit_length() <= 63 else f"an integer of {value.bit_length()} bits"
    if isinstance(value, float):
        return value if math.isfinite(value) else {math.inf: "Infinity", -math.inf: "-Infinity"}.get(value, "NaN")
    if isinstance(value, str):
        return cut(value)
    if isinstance(value, bytes | bytearray):
        return cut(bytes(value[: EXCERPT_CHARS * 4]).decode("utf-8", "backslashreplace"))
    if isinstance(value, dict):
        return f"an object with {len(value)} keys"
    if isinstance(value, list | tuple):
        return f"an array of {len(value)} items"
    return f"a {type(value).__name__}"


def safe_loc(loc: Iterable[Any]) -> list[str | int]:
    return [p if isinstance(p, int) and not isinstance(p, bool) else cut(str(p), LOC_KEY_CHARS) for p in loc]


def safe_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """Pydantic's (or our own) error dicts as the 422 shows them."""
    shown = []
    for error in list(errors)[:MAX_ERRORS]:
        item: dict[str, Any] = {
            "loc": safe_loc(error.get("loc", ())),
            "msg": cut(str(error.get("msg", "")), MSG_CHARS),
            "type": str(error.get("type", "value_error")),
        }
        if "input" in error:
            item["input"] = excerpt(error["input"])
        shown.append(item)
    return shown


def invalid(loc: Sequence[Any], msg: str) -> RequestValidationError:
    """A 422 naming where (``("query", "limit")``, ``("body", "input", "text")``) and the rule."""
    return RequestValidationError([{"loc": tuple(loc), "msg": msg, "type": "value_error"}])


def located(exc: ValidationError, *prefix: str) -> RequestValidationError:
    """Pydantic's errors for a part of the request, as a 422 naming the place in the request:
    ``located(exc, "body", "input")``."""
    return RequestValidationError([{**e, "loc": (*prefix, *e["loc"])} for e in exc.errors(include_url=False)])


def error_body(detail: Any) -> dict[str, Any]:
    return {"detail": cut(detail, MSG_CHARS) if isinstance(detail, str) else detail}


# --- the bodies, for the OpenAPI document -------------------------------------------------


class FieldError(BaseModel):
    loc: list[str | int] = Field(description='Where: ["body", "input", "text"], ["query", "limit"], ...')
    msg: str = Field(description="The rule that was broken, and what to do.")
    type: str
    input: Any = Field(default=None, description="A short excerpt of the rejected value.")


class Invalid(BaseModel):
    """422: what was sent breaks a rule; nothing was stored."""

    detail: list[FieldError]


class Refusal(BaseModel):
    """Any other refusal: what is wrong and what to do."""

    detail: str


# The refusals each sort of operation may answer, for ``responses=``: every /v1 operation may
# answer 401 (key), 403 (scope), 422 (a parameter) and 503 (PostgreSQL away).
def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The documented error answers of an operation (FastAPI's ``responses=``)."""
    described = {
        400: "The body cannot be read: it is not UTF-8 JSON.",
        401: "No API key, or one that is unknown or revoked.",
        403: "The key lacks the scope this operation needs.",
        404: "No such resource for this tenant (another tenant's is not revealed).",
        409: "The request conflicts with the resource's state.",
        413: "The body is over the size limit (counted on the bytes read, chunked or not).",
        415: "The body's content type is not one this operation reads.",
        422: "What was sent breaks a rule; nothing was stored.",
        429: "Over a limit of this tenant; retry after Retry-After seconds.",
        503: "PostgreSQL is unavailable; nothing was accepted; retry after Retry-After seconds.",
    }
    every = sorted({401, 403, 422, 503, *codes})
    return {code: {"model": Invalid if code == 422 else Refusal, "description": described[code]} for code in every}


# --- handlers ------------------------------------------------------------------------------


def install(app: FastAPI) -> None:
    """Register the handlers that answer every refusal the API gives."""

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return SafeJSONResponse({"detail": safe_errors(exc.errors())}, status_code=UNPROCESSABLE)

    @app.exception_handler(StarletteHTTPException)
    async def refused(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == status.HTTP_405_METHOD_NOT_ALLOWED:  # every method of the path, not one route's
            headers["Allow"] = ", ".join(allowed_methods(app, request.url.path))
        return SafeJSONResponse(error_body(exc.detail), status_code=exc.status_code, headers=headers)

    @app.exception_handler(InvalidField)
    async def invalid_field(request: Request, exc: InvalidField) -> JSONResponse:
        return SafeJSONResponse({"detail": safe_errors(exc.errors)}, status_code=UNPROCESSABLE)

    @app.exception_handler(Conflict)
    async def conflict(request: Request, exc: Conflict) -> JSONResponse:
        return SafeJSONResponse(error_body(str(exc)), status_code=status.HTTP_409_CONFLICT)

    @app.exception_handler(OverLimit)
    async def over_limit(request: Request, exc: OverLimit) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after_s)}
        return SafeJSONResponse(error_body(str(exc)), status_code=status.HTTP_429_TOO_MANY_REQUESTS, headers=headers)

    @app.exception_handler(DBAPIError)
    @app.exception_handler(psycopg.Error)
    async def database_error(request: Request, exc: Exception) -> JSONResponse:
        return database_answer(request, exc)


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """The methods some route of ``app`` answers at ``path``."""
    found = {m for r in app.routes if isinstance(r, Route) and r.path_regex.match(path) for m in r.methods or ()}
    return sorted(found)


def database_answer(request: Request, exc: Exception) -> SafeJSONResponse:
    """422 for a value PostgreSQL refuses, 503 for a database that cannot be reached, 500 else."""
    where = f"{request.method} {request.url.path}"
    if isinstance(exc, DataError | psycopg.DataError):
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        log.info("%s: a value was refused by PostgreSQL: %s", where, reason)
        error = {"loc": ["body"], "msg": f"a value cannot be stored: {reason}", "type": "data_error"}
        return SafeJSONResponse({"detail": safe_errors([error])}, status_code=UNPROCESSABLE)
    if is_unavailable(exc):
        log.warning("%s: database unavailable: %s", where, exc)
        return SafeJSONResponse(
            {"detail": "the job store (PostgreSQL) is unavailable; nothing was accepted, retry later"},
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": "5"},
        )
    log.error("%s: database error", where, exc_info=exc)
    return SafeJSONResponse({"detail": "internal error"}, status_code=status.HTTP_500_INTERNAL_SERVER_ERROR)


def is_unavailable(exc: BaseException) -> bool:
    """Whether a database error means "cannot be reached now" (retrying may help)."""
    if isinstance(exc, DBAPIError):
        return exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError | InternalError)
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError | psycopg.InternalError)
