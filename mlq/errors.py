"""What the ``mlq`` command prints when something it needs is wrong: one line saying what and
what to do, and exit status 1 (a usage error stays Click's, with status 2). Everything not
listed here is a bug, and keeps its traceback."""

from __future__ import annotations

from typing import Any

import httpx

from jobs.errors import MlqError


def explain(exc: BaseException) -> str | None:
    """One line for ``exc``, or None when it is not one the user can fix."""
    from producer.client import ApiError

    if isinstance(exc, MlqError):
        return str(exc)
    if isinstance(exc, ApiError):
        return api_error(exc.status, exc.detail)
    if isinstance(exc, httpx.TransportError):
        try:
            url: Any = exc.request.url
        except RuntimeError:  # no request attached
            url = "the API"
        return (
            f"cannot reach {url} ({type(exc).__name__}: {exc}); is `mlq api` or `mlq standalone` running? "
            "Set --api-url or MLQ_API_URL"
        )
    if isinstance(exc, FileNotFoundError):
        return f"{exc.filename}: no such file"
    if is_database_down(exc):
        first = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        return f"cannot reach PostgreSQL ({first}); is it running? Check MLQ_DATABASE_URL"
    return None


def api_error(status: int, detail: Any) -> str:
    hints = {
        401: "; check the key (--api-key or MLQ_API_KEY; `mlq keys create --tenant T` makes one)",
        403: "; this key lacks the scope (`mlq keys create --scopes submit,read`)",
        429: "; retry later",
        503: "; PostgreSQL is away, retry later",
    }
    return f"the API answered {status}: {describe(detail)}{hints.get(status, '')}"


def describe(detail: Any) -> str:
    """An error body's ``detail`` in words: a string, a 422's list of fields, a refused bulk run."""
    if isinstance(detail, list):
        return "; ".join(f"{where(e)}: {e.get('msg')}" for e in detail[:5])
    if isinstance(detail, dict) and "errors" in detail:
        lines = [
            f"line {e.get('line')}: {'.'.join(map(str, e.get('loc', [])))}: {e.get('msg')}" for e in detail["errors"]
        ]
        return f"{detail.get('message')}: " + "; ".join(lines[:5])
    return str(detail)


def where(error: dict[str, Any]) -> str:
    return ".".join(str(part) for part in error.get("loc", []))


def is_database_down(exc: BaseException) -> bool:
    try:
        import psycopg
        from sqlalchemy.exc import OperationalError
    except ImportError:  # pragma: no cover - both ship with mlq
        return False
    return isinstance(exc, OperationalError | psycopg.OperationalError)
