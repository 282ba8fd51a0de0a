"""/v1/jobs: submit, read (with long-poll), list, cancel."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Query, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from jobs import store
from jobs.kinds import KINDS
from jobs.status import TERMINAL, JobStatus
from producer.deps import ReaderDep, SessionDep, StateDep, SubmitterDep
from producer.schemas import JobPage, JobView, SubmitJob

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

NOT_FOUND = "no such job"  # also for another tenant's job: its existence is not revealed


def body_error(loc: tuple[Any, ...], msg: str, kind: str = "value_error") -> RequestValidationError:
    return RequestValidationError([{"loc": ("body", *loc), "msg": msg, "type": kind}])


def validate_submission(state: StateDep, body: SubmitJob) -> store.NewJob:
    """Check kind, model and input against the kind's schema and limits; nothing is stored yet."""
    if body.kind not in KINDS:
        raise body_error(("kind",), f"unknown job kind {body.kind!r}; known kinds: {', '.join(sorted(KINDS))}")
    spec = state.models.spec(body.kind)
    if spec is None:
        raise body_error(("kind",), f"kind {body.kind!r} is not served here: the models file has no model for it")
    try:
        parsed = KINDS[body.kind].validate_input(body.input, limits=spec.limits)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", "input", *e["loc"])} for e in exc.errors(include_url=False)]
        ) from None
    return store.NewJob(
        kind=body.kind,
        model=spec.model,
        profile=state.models.profile,
        input=parsed.model_dump(mode="json"),
        priority=body.priority,
        metadata=body.metadata,
        max_attempts=spec.max_attempts,
    )


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=JobView)
def submit_job(
    body: SubmitJob,
    state: StateDep,
    session: SessionDep,
    principal: SubmitterDep,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> JobView:
    """Accept a job: validated, committed as ``queued``, then published. 202 means it is durable."""
    new = validate_submission(state, body)
    if idempotency_key is not None:
        new = store.NewJob(**{**new.__dict__, "idempotency_key": idempotency_key})
    with session.begin():
        job, created = store.insert_job(session, tenant_id=principal.tenant_id, job=new)
    if created:
        state.publisher.publish(kind=job.kind, job_ids=[job.id], priority=job.priority)
    elif job.kind != new.kind or job.input != new.input:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"Idempotency-Key {idempotency_key!r} was already used for a different job ({job.id})",
        )
    else:
        response.headers["Idempotent-Replayed"] = "true"
    return JobView.of(job)


@router.get("/{job_id}", response_model=JobView)
async def get_job(
    job_id: uuid.UUID,
    state: StateDep,
    principal: ReaderDep,
    wait: Annotated[float, Query(ge=0, description="Seconds to wait for the job to finish.")] = 0,
) -> JobView:
    """Read a job; with ``?wait=S``, answer as soon as it finishes or after S seconds."""
    if wait > state.settings.max_wait_s:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"wait={wait} is over the limit max_wait_s={state.settings.max_wait_s}",
        )

    def read() -> JobView | None:
        with state.sessions() as session:
            job = store.get_job(session, tenant_id=principal.tenant_id, job_id=job_id)
            return None if job is None else JobView.of(job)

    deadline = time.monotonic() + wait
    while True:
        with state.waiter.subscribe(job_id) as finished:
            view = await run_in_threadpool(read)
            if view is None:
                raise HTTPException(status.HTTP_404_NOT_FOUND, NOT_FOUND)
            remaining = deadline - time.monotonic()
            if view.status in TERMINAL or remaining <= 0:
                return view
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(finished.wait(), timeout=state.waiter.poll_interval_s(remaining))


@router.get("", response_model=JobPage)
def list_jobs(
    state: StateDep,
    session: SessionDep,
    principal: ReaderDep,
    status_: Annotated[JobStatus | None, Query(alias="status")] = None,
    kind: str | None = None,
    limit: Annotated[int, Query(ge=1)] = 50,
    cursor: str | None = None,
) -> JobPage:
    """The tenant's jobs, newest first, a page at a time."""
    if limit > state.settings.page_size_max:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"limit={limit} is over page_size_max={state.settings.page_size_max}",
        )
    try:
        jobs, next_cursor = store.list_jobs(
            session, tenant_id=principal.tenant_id, status=status_, kind=kind, limit=limit, cursor=cursor
        )
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    return JobPage(data=[JobView.of(j) for j in jobs], next_cursor=next_cursor)


@router.post("/{job_id}/cancel", response_model=JobView)
def cancel_job(job_id: uuid.UUID, session: SessionDep, principal: SubmitterDep) -> JobView:
    """Cancel a queued job at once; a running one ends ``cancelled`` when its attempt stops.
    Cancelling a job that already succeeded or failed is a 409."""
    with session.begin():
        job = store.cancel_job(session, tenant_id=principal.tenant_id, job_id=job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, NOT_FOUND)
    if job.status in (JobStatus.succeeded.value, JobStatus.failed.value):
        raise HTTPException(status.HTTP_409_CONFLICT, f"job {job_id} already {job.status}")
    return JobView.of(job)
