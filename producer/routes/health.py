"""/healthz (the process answers) and /readyz (PostgreSQL and Redis answer)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response, status
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import text

from producer.deps import StateDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """On the event loop, never on the worker threads: it answers while they are all busy."""
    return {"status": "ok"}


@router.get(
    "/readyz", responses={503: {"description": "PostgreSQL does not answer; the body says which checks failed."}}
)
async def readyz(state: StateDep, response: Response) -> dict[str, Any]:
    """Ready when PostgreSQL answers (required) and Redis answers (without it jobs are
    still accepted, and wait in PostgreSQL: ``degraded``)."""

    def check_db() -> str:
        with state.sessions() as session:
            session.execute(text("SELECT 1"))
        return "ok"

    checks: dict[str, str] = {}
    for name, check in (("postgres", check_db), ("redis", state.publisher.ping)):
        try:
            await run_in_threadpool(check)
            checks[name] = "ok"
        except Exception as exc:
            checks[name] = f"error: {type(exc).__name__}: {exc}"[:300]
    checks["listener"] = "ok" if state.waiter.connected.is_set() else "reconnecting"
    if checks["postgres"] != "ok":
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        overall = "unavailable"
    else:
        overall = "ok" if checks["redis"] == "ok" else "degraded"
    return {"status": overall, "checks": checks}
