"""The floor under ``POST /v1/jobs`` (``python -m bench pipeline --modes http-floor``): FastAPI
and uvicorn as ``mlq api`` runs them, one route that validates a job's body with pydantic and
answers a job's shape, and nothing else (no key, database, broker, wait or middleware of
mlq's). What any Python HTTP front of a job system pays per request before its own work."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel


class JobIn(BaseModel):
    kind: str
    input: dict[str, Any]


class JobOut(BaseModel):
    id: uuid.UUID
    kind: str
    status: str
    input: dict[str, Any]
    output: dict[str, Any] | None
    created_at: datetime


def create_app() -> FastAPI:
    app = FastAPI()

    @app.post("/v1/jobs", status_code=202, response_model=JobOut)
    async def submit(job: JobIn, wait: float | None = None) -> JobOut:
        return JobOut(
            id=uuid.uuid4(),
            kind=job.kind,
            status="succeeded",
            input=job.input,
            output={"label": "free", "score": 1.0},
            created_at=datetime.now(UTC),
        )

    return app
