"""``POST /v1/jobs`` without FastAPI's general machinery: the hot path of single jobs.

The route is declared in ``routes/jobs.py`` like any other (its parameters, body, answers and
OpenAPI document come from ``submit_job``'s signature, as FastAPI reads it), but it is served
by ``SubmitRoute``: a handler that reads exactly that signature's few parameters itself and
calls ``submit_job`` with them. FastAPI's handler solves a dependency tree for every request,
reads the content type with ``email.message`` and validates the answer once more after the
endpoint built it; together about 80 µs a request, on a path whose own work is a few hundred
(issue #15, ``bench/README.md``).

What it keeps, so a client cannot tell: the same validation (FastAPI's own fields validate
each value, so the errors and their ``loc`` are FastAPI's), in FastAPI's order (a body that is
not JSON, then the key's scope, then one 422 for every bad query, header and body value),
the same exception handlers, and the same bytes out. ``tests/integration/test_submit_route.py``
compares the two handlers answer by answer.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi._compat import ModelField
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

from producer.deps import principal_of_request, require_scope

PARAMETERS = ("body", "state", "principal", "response", "idempotency_key", "wait")  # submit_job's, in order
SCOPE = "submit"


class SubmitRoute(APIRoute):
    """An APIRoute whose handler reads ``submit_job``'s parameters directly (see the module)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        declared = tuple(inspect.signature(self.endpoint).parameters)
        if declared != PARAMETERS:  # a parameter added to submit_job must be read here too
            raise TypeError(f"SubmitRoute reads the parameters {PARAMETERS}; {self.endpoint.__name__} has {declared}")
        assert self.body_field is not None and self.response_field is not None
        body_field, answer_field = self.body_field, self.response_field
        [wait_field] = self.dependant.query_params
        [key_field] = self.dependant.header_params
        endpoint, status_code = self.endpoint, self.status_code or 200

        async def handle(request: Request) -> Response:
            body = parsed_body(await request.body(), request.headers.get("content-type"))
            principal = await principal_of_request(request, request.app.state.mlq)
            require_scope(principal, SCOPE)
            wait, errors = param(wait_field, request.query_params)
            key, wrong = param(key_field, request.headers)
            errors += wrong
            if body is None:
                errors.append({"type": "missing", "loc": ("body",), "msg": "Field required", "input": None})
            else:
                body, wrong = body_field.validate(body, {}, loc=("body",))
                errors += wrong
            if errors:
                raise RequestValidationError(errors)
            extra = Response()  # the endpoint's headers (Idempotent-Replayed), as FastAPI makes it
            del extra.headers["content-length"]
            view = await endpoint(body, request.app.state.mlq, principal, extra, key, wait)
            answer = Response(answer_field.serialize_json(view), status_code=status_code, media_type="application/json")
            answer.headers.raw.extend(extra.headers.raw)
            return answer

        return handle


def parsed_body(data: bytes, content_type: str | None) -> Any:
    """The body as FastAPI reads it: JSON when the content type says so, the bytes otherwise,
    None when empty; 422 for broken JSON, 400 for bytes that cannot be decoded at all."""
    if not data:
        return None
    media = (content_type or "").partition(";")[0].strip().lower()
    if not (media == "application/json" or (media.startswith("application/") and media.endswith("+json"))):
        return data  # refused by the body's validation, as FastAPI refuses it
    try:
        return json.loads(data)
    except json.JSONDecodeError as exc:
        error = {"type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error", "input": {}}
        raise RequestValidationError([{**error, "ctx": {"error": exc.msg}}]) from exc
    except ValueError as exc:  # not UTF-8, UTF-16 or UTF-32
        raise HTTPException(400, "There was an error parsing the body") from exc


def param(field: ModelField, given: Mapping[str, str]) -> tuple[Any, list[Any]]:
    """A query or header parameter validated by FastAPI's own field for it, or its default."""
    raw = given.get(field.alias)
    if raw is None:
        return field.get_default(), []
    value, errors = field.validate(raw, {}, loc=(field.field_info.in_.value, field.alias))  # type: ignore[attr-defined]
    return value, errors
