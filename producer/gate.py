"""What every request passes before the application reads a byte of its body.

- **The key first.** A request that sends something under ``/v1/`` (POST, PUT, PATCH,
  DELETE) must carry a valid API key: it is checked here, and a missing or unknown key is
  a 401 before the body is read. The principal travels in the request's scope, so the
  route's dependency does not look it up again.
- **The body is counted on the bytes read,** chunked or not: past the limit
  (``max_request_bytes``; ``batch_max_bytes`` for bulk runs) reading stops with a 413. A
  declared Content-Length over the limit is refused before anything is read.
- **Every answer says ``X-Content-Type-Options: nosniff``.**
- **No NUL in the path or the query** of ``/v1/``. No such value can be stored or matched: a
  422 names the parameter, where PostgreSQL would otherwise refuse it mid-request.

A plain ASGI middleware: Starlette's ``BaseHTTPMiddleware`` costs every request a task and
a stream wrapper.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

import psycopg
from fastapi import HTTPException, status
from sqlalchemy.exc import DBAPIError
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobs.settings import Settings
from producer.deps import PRINCIPAL, State, principal_of
from producer.errors import SafeJSONResponse, database_answer, error_body, respond, safe_errors

SENDING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CLOSE = {"Connection": "close"}
NOSNIFF = (b"x-content-type-options", b"nosniff")  # on every answer: a browser takes each type as given


class TooLarge(HTTPException):
    """The body grew past its limit while it was read."""

    def __init__(self, *, name: str, limit: int) -> None:
        super().__init__(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"the body is over the limit {name}={limit} bytes; send less",
            headers=CLOSE,  # the rest of the body is not read: the connection cannot be reused
        )


class Gate:
    def __init__(self, app: ASGIApp, *, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = await self.refusal(scope)
        if refusal is not None:
            if has_body(scope):  # refused unread: the connection cannot be reused
                refusal.headers.update(CLOSE)
            await refusal(scope, receive, send)
            return
        await self.counted(scope, receive, send)

    async def counted(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The app, reading a body counted as it arrives, its answers marked nosniff."""
        limit, name = self.limit_of(scope)
        read_bytes = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal read_bytes
            message = await receive()
            if message["type"] == "http.request":
                read_bytes += len(message.get("body", b""))
                if read_bytes > limit:
                    raise TooLarge(name=name, limit=limit)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", ()), NOSNIFF]
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except TooLarge as exc:  # raised where nothing turned it into an answer
            if started:
                raise
            answer = respond(scope["path"], error_body(exc.detail), status_code=exc.status_code, headers=CLOSE)
            await answer(scope, receive, send)

    async def refusal(self, scope: Scope) -> SafeJSONResponse | None:
        """The answer to a request refused before its body is read, or None."""
        refusal = self.over_declared_size(scope)
        if refusal is None and scope["path"].startswith("/v1/"):
            refusal = nul_in_request(scope)
            if refusal is None and scope["method"] in SENDING:
                refusal = await authenticated(scope)
        return refusal

    def limit_of(self, scope: Scope) -> tuple[int, str]:
        if scope["path"].startswith(("/v1/batches", "/v1/files")):
            return self.settings.batch_max_bytes, "batch_max_bytes"
        return self.settings.max_request_bytes, "max_request_bytes"

    def over_declared_size(self, scope: Scope) -> SafeJSONResponse | None:
        length = Headers(scope=scope).get("content-length", "")
        limit, name = self.limit_of(scope)
        if length.isdigit() and int(length) > limit:
            return respond(
                scope["path"],
                error_body(f"the body is {length} bytes; the limit is {name}={limit}"),
                status_code=status.HTTP_413_CONTENT_TOO_LARGE,
            )
        return None


def has_body(scope: Scope) -> bool:
    headers = Headers(scope=scope)
    return headers.get("content-length", "0") not in ("", "0") or "chunked" in headers.get("transfer-encoding", "")


def nul_in_request(scope: Scope) -> SafeJSONResponse | None:
    errors = []
    if "\x00" in scope["path"]:
        errors.append({"loc": ["path"], "msg": "contains a NUL character (%00)", "type": "value_error"})
    if b"%00" in scope["query_string"] or b"\x00" in scope["query_string"]:
        for name, value in parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True):
            if "\x00" in name or "\x00" in value:
                errors.append({"loc": ["query", name], "msg": "contains a NUL character (%00)", "type": "value_error"})
    if not errors:
        return None
    return respond(scope["path"], {"detail": safe_errors(errors)}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


async def authenticated(scope: Scope) -> SafeJSONResponse | None:
    """None when the request's key is valid (its principal now in the scope), else the answer."""
    request = Request(scope)
    state: State = scope["app"].state.mlq
    try:
        principal = await principal_of(state, request.headers.get("authorization"))
    except HTTPException as exc:
        return respond(scope["path"], error_body(exc.detail), status_code=exc.status_code, headers=exc.headers)
    except (DBAPIError, psycopg.Error) as exc:
        return database_answer(request, exc)
    scope.setdefault("state", {})[PRINCIPAL] = principal
    return None
