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

PARAMETERS = ("body", "state", "principal", "response", "idempotency_key", "wait")  # submit_job's
DEPENDENCIES = ("state", "principal")  # the parameters FastAPI would solve as dependencies: nothing else
SCOPE = "submit"
EMPTY = object()  # no body at all (a JSON ``null`` is a body, and refused as one)


class SubmitRoute(APIRoute):
    """An APIRoute whose handler reads ``submit_job``'s parameters directly (see the module).

    It reads only what the endpoint declares: a dependency added to the router or to its
    ``include_router``, or an app's ``dependency_overrides``, would not apply to this route;
    a parameter or dependency added to ``submit_job`` is refused here at import."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        declared = tuple(inspect.signature(self.endpoint).parameters)
        solved = tuple(d.name for d in self.dependant.dependencies)
        if declared != PARAMETERS or solved != DEPENDENCIES:  # a new one must be read here too
            raise TypeError(
                f"SubmitRoute reads the parameters {PARAMETERS} (dependencies {DEPENDENCIES}); "
                f"{self.endpoint.__name__} has {declared} (dependencies {solved})"
            )
        if self.body_field is None or self.response_field is None:
            raise TypeError(f"SubmitRoute serves an endpoint with a body and a response model, not {self.endpoint}")
        body_field, answer_field = self.body_field, self.response_field
        [wait_field] = self.dependant.query_params
        [key_field] = self.dependant.header_params
        endpoint, status_code = self.endpoint, self.status_code or 200

        async def handle(request: Request) -> Response:
            body = await read_body(request)
            state = request.app.state.mlq
            principal = await principal_of_request(request, state=state)
            require_scope(principal, scope=SCOPE)
            wait, errors = param(wait_field, given=request.query_params)
            key, wrong = param(key_field, given=request.headers)
            errors += wrong
            if body is EMPTY:
                errors.append({"type": "missing", "loc": ("body",), "msg": "Field required", "input": None})
            else:
                body, wrong = body_field.validate(body, {}, loc=("body",))
                errors += wrong
            if errors:
                raise RequestValidationError(errors)
            extra = Response()  # the endpoint's headers (Idempotent-Replayed), as FastAPI makes it
            del extra.headers["content-length"]
            view = await endpoint(
                body=body, state=state, principal=principal, response=extra, idempotency_key=key, wait=wait
            )
            answer = Response(answer_field.serialize_json(view), status_code=status_code, media_type="application/json")
            answer.headers.raw.extend(extra.headers.raw)
            return answer

        return handle


async def read_body(request: Request) -> Any:
    """The body as FastAPI reads it: JSON when the content type says so, the bytes otherwise,
    EMPTY when there is none; 422 for broken JSON, 400 for anything else that goes wrong
    (bytes no JSON decoder reads, nesting too deep, a client gone mid-body). The gate's 413
    passes through."""
    try:
        data = await request.body()
        if not data:
            return EMPTY
        if not is_json(request.headers.get("content-type")):
            return data  # refused by the body's validation, as FastAPI refuses it
        return json.loads(data)
    except json.JSONDecodeError as exc:
        error = {"type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error", "input": {}}
        raise RequestValidationError([{**error, "ctx": {"error": exc.msg}}]) from exc
    except HTTPException:
        raise
    except Exception as exc:
        raise HTTPException(400, "There was an error parsing the body") from exc


def is_json(content_type: str | None) -> bool:
    """``application/json`` or ``application/*+json``, read as ``email.message`` reads a content
    type (FastAPI's way): parameters dropped, case ignored, anything without exactly one ``/``
    taken as ``text/plain``."""
    media = (content_type or "").partition(";")[0].strip().lower()
    main, _, sub = media.partition("/")
    return media.count("/") == 1 and main == "application" and (sub == "json" or sub.endswith("+json"))


def param(field: ModelField, *, given: Mapping[str, str]) -> tuple[Any, list[Any]]:
    """A query or header parameter validated by FastAPI's own field for it, or its default."""
    raw = given.get(field.alias)
    if raw is None:
        return field.get_default(), []
    value, errors = field.validate(raw, {}, loc=(field.field_info.in_.value, field.alias))  # type: ignore[attr-defined]
    return value, errors
