"""How the API answers a refusal: the one place that turns errors into HTTP status codes and
bodies, and the bodies' shapes as the OpenAPI document shows them.

- A refusal of the request's content is a 422 whose ``detail`` is a list of
  ``{loc, msg, type, input?}``: where, which rule, and at most a short excerpt of what was
  sent. The excerpt is always renderable: long text is cut, lone surrogates are escaped,
  NaN and infinities are named, objects and arrays are described, never echoed.
- A value PostgreSQL refuses (``DataError``: a NUL, a number out of range) is a 422 too:
  retrying cannot help. Only a lost or refused connection is a 503 with ``Retry-After``.
- Every other refusal is ``{"detail": "<what is wrong and what to do>"}``.

On the routes OpenAI's SDK calls (``/v1/embeddings``, ...) every refusal takes OpenAI's
shape instead, ``{"error": {"message", "type", "param", "code"}}``, and a refused field is a
400 naming it in ``param`` (``input``, ``input[2]``): ``respond`` picks the shape by path,
for the handlers here and for the gate alike.

Error bodies are written with every non-ASCII character escaped, so no value a client sent
can make the answer itself fail.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
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


# --- OpenAI's shape, on the routes its SDK calls ---------------------------------------------

OPENAI_PATHS = (
    "/v1/embeddings", "/v1/chat/", "/v1/completions", "/v1/moderations", "/v1/audio/", "/v1/images/", "/v1/files",
)  # fmt: skip
OPENAI_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error", 429: "rate_limit_error"}


def speaks_openai(path: str) -> bool:
    return path.startswith(OPENAI_PATHS)


def openai_param(loc: Sequence[Any]) -> str | None:
    """A location as OpenAI names a parameter: its name and the index of the item at fault,
    ``("body", "input", 2, "text")`` -> ``input[2]`` (pydantic's union tags are left out)."""
    parts = list(loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc)
    if not parts:
        return None
    index = next((p for p in parts[1:] if isinstance(p, int) and not isinstance(p, bool)), None)
    return str(parts[0]) if index is None else f"{parts[0]}[{index}]"


def openai_body(status_code: int, content: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """A native refusal (``{"detail": ...}``) as OpenAI's SDK reads one; a 422 becomes a 400."""
    detail = content.get("detail")
    param = None
    if isinstance(detail, list):  # refused fields: the first names the parameter
        status_code = status.HTTP_400_BAD_REQUEST if status_code == UNPROCESSABLE else status_code
        param = openai_param(detail[0].get("loc", ())) if detail else None
        message = "; ".join(f"{openai_param(e.get('loc', ())) or 'body'}: {e.get('msg', '')}" for e in detail[:3])
    else:
        message = str(detail)
    kind = OPENAI_TYPES.get(status_code, "server_error" if status_code >= 500 else "invalid_request_error")
    return status_code, {"error": {"message": message, "type": kind, "param": param, "code": None}}


def respond(
    path: str, content: dict[str, Any], *, status_code: int, headers: Mapping[str, str] | None = None
) -> SafeJSONResponse:
    """A refusal in the shape the path speaks: mlq's, or OpenAI's on the routes its SDK calls."""
    if speaks_openai(path):
        status_code, content = openai_body(status_code, content)
    return SafeJSONResponse(content, status_code=status_code, headers=headers)


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


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, authentication_error, permission_error, ...")
    param: str | None = Field(description="The parameter at fault: input, input[2], model, ...")
    code: str | None


class OpenAIError(BaseModel):
    """A refusal on the routes OpenAI's SDK calls, in OpenAI's shape; nothing was stored."""

    error: OpenAIErrorDetail


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
        500: "The job ran and failed for a reason other than its input; the message says which job and why.",
        503: "PostgreSQL is unavailable; nothing was accepted; retry after Retry-After seconds.",
        504: "The jobs were accepted and have not finished within max_wait_s; GET /v1/jobs/{id} has them later.",
    }
    every = sorted({401, 403, 422, 503, *codes})
    return {code: {"model": Invalid if code == 422 else Refusal, "description": described[code]} for code in every}


def openai_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses`` of an OpenAI-compatible operation: every refusal in OpenAI's shape, a
    refused field a 400."""
    described = responses(*codes)
    described[400] = {"description": "What was sent breaks a rule (``param`` names it); nothing was stored."}
    del described[422]
    return {
        code: {**answer, "model": OpenAIError} for code, answer in sorted(described.items(), key=lambda c: str(c[0]))
    }


# --- handlers ------------------------------------------------------------------------------


def install(app: FastAPI) -> None:
    """Register the handlers that answer every refusal the API gives."""

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return respond(request.url.path, {"detail": safe_errors(exc.errors())}, status_code=UNPROCESSABLE)

    @app.exception_handler(StarletteHTTPException)
    async def refused(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == status.HTTP_405_METHOD_NOT_ALLOWED:  # every method of the path, not one route's
            headers["Allow"] = ", ".join(allowed_methods(app, request.url.path))
        return respond(request.url.path, error_body(exc.detail), status_code=exc.status_code, headers=headers)

    @app.exception_handler(InvalidField)
    async def invalid_field(request: Request, exc: InvalidField) -> JSONResponse:
        return respond(request.url.path, {"detail": safe_errors(exc.errors)}, status_code=UNPROCESSABLE)

    @app.exception_handler(Conflict)
    async def conflict(request: Request, exc: Conflict) -> JSONResponse:
        return respond(request.url.path, error_body(str(exc)), status_code=status.HTTP_409_CONFLICT)

    @app.exception_handler(OverLimit)
    async def over_limit(request: Request, exc: OverLimit) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after_s)}
        return respond(
            request.url.path, error_body(str(exc)), status_code=status.HTTP_429_TOO_MANY_REQUESTS, headers=headers
        )

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
        return respond(request.url.path, {"detail": safe_errors([error])}, status_code=UNPROCESSABLE)
    if is_unavailable(exc):
        log.warning("%s: database unavailable: %s", where, exc)
        return respond(
            request.url.path,
            {"detail": "the job store (PostgreSQL) is unavailable; nothing was accepted, retry later"},
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": "5"},
        )
    log.error("%s: database error", where, exc_info=exc)
    return respond(request.url.path, {"detail": "internal error"}, status_code=status.HTTP_500_INTERNAL_SERVER_ERROR)


def is_unavailable(exc: BaseException) -> bool:
    """Whether a database error means "cannot be reached now" (retrying may help)."""
    if isinstance(exc, DBAPIError):
        return exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError | InternalError)
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError | psycopg.InternalError)
