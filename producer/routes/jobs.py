"""/v1/jobs: submit, read (with long-poll), list, cancel."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError
from starlette.datastructures import UploadFile as StarletteUpload

from jobs import lifecycle, store
from jobs.keys import Principal
from jobs.queues import DEFAULT_PRIORITY
from jobs.status import TERMINAL, JobStatus
from producer.deps import IdempotencyKey, ReaderDep, SessionDep, State, StateDep, SubmitterDep
from producer.errors import invalid, located, responses
from producer.intake import Submission
from producer.routes.submit_route import SubmitRoute
from producer.schemas import JobPage, JobView, SubmitJob
from producer.submit import body_error, json_field, prepared

MAX_UPLOAD_FILES = 4  # binary input fields per job

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

NOT_FOUND = "no such job"  # also for another tenant's job: its existence is not revealed


WaitQuery = Annotated[float, Query(ge=0, description="Seconds to wait for the job to finish (at most max_wait_s).")]


async def submit_job(
    body: SubmitJob,
    state: StateDep,
    principal: SubmitterDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
    wait: WaitQuery = 0,
) -> JobView:
    """Accept a job: validated, committed as ``queued``, then published. 202 means it is durable.
    Binary inputs (audio, images) go inline as ``{"base64": ...}`` or through ``/v1/jobs/upload``.
    With ``?wait=S`` the answer comes when the job finishes (or after S seconds): submit and
    result in one round trip."""
    check_wait(state, wait, principal=principal)
    submission = await prepared(state, body, principal=principal, idempotency_key=idempotency_key)
    if wait <= 0:
        job, created = await state.intake.accept(submission)
        if not created:
            response.headers["Idempotent-Replayed"] = "true"
        return seen_by(principal, job)
    view, created = await accepted_and_awaited(state, submission, wait_s=wait)
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return view


router.add_api_route(  # served by SubmitRoute's lean handler: the single job's hot path (issue #15)
    "",
    submit_job,
    methods=["POST"],
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobView,
    responses=responses(400, 409, 413, 429),
    route_class_override=SubmitRoute,
)


async def accepted_and_awaited(state: State, submission: Submission, *, wait_s: float) -> tuple[JobView, bool]:
    """Commit and publish a job, then wait for it to finish (at most ``wait_s``): the job as it
    is then, and whether it is new (False: an Idempotency-Key named an earlier one)."""
    deadline = time.monotonic() + wait_s
    tenant_id = submission.principal.tenant_id
    # Subscribed before the job is published, so its wake-up cannot be missed and a new job
    # needs no read until it is woken: one row read per answer.
    with state.waiter.subscribe(submission.job.id) as wake:
        job, created = await state.intake.accept(submission)
        if created:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.event.wait(), timeout=state.waiter.poll_interval_s(wait_s))
            if (row := wake.row_of(tenant_id)) is not None:
                return JobView.of(row), created
    left_s = max(0.0, deadline - time.monotonic())
    return await wait_for(state, submission.principal, job.id, wait_s=left_s), created


@router.post(
    "/upload", status_code=status.HTTP_202_ACCEPTED, response_model=JobView, responses=responses(409, 413, 429)
)
async def upload_job(
    request: Request,
    state: StateDep,
    principal: SubmitterDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> JobView:
    """Multipart form: ``kind``, ``input`` (JSON, optional), ``priority``, ``metadata`` (JSON), and one
    file part per binary input field, named after it (e.g. ``audio=@clip.wav``)."""
    form = await request.form(max_files=MAX_UPLOAD_FILES, max_fields=16)
    uploads: dict[str, tuple[bytes, str]] = {}
    fields: dict[str, Any] = {}
    for name, value in form.multi_items():
        if isinstance(value, StarletteUpload):
            uploads[name] = (await value.read(), value.content_type or "application/octet-stream")
        else:
            fields[name] = value
    raw_input = json_field(fields, "input")
    if not isinstance(raw_input, dict):
        raise body_error(("input",), "form field input must be a JSON object")
    form_body = {
        "kind": fields.get("kind", ""),
        "input": {**raw_input, **{name: {"artifact": name} for name in uploads}},
        "priority": fields.get("priority", DEFAULT_PRIORITY),
        "metadata": json_field(fields, "metadata"),
    }
    try:
        body = SubmitJob.model_validate(form_body)
    except ValidationError as exc:
        raise located(exc, "body") from None
    submission = await prepared(state, body, principal=principal, idempotency_key=idempotency_key, uploads=uploads)
    job, created = await state.intake.accept(submission)
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return seen_by(principal, job)


def seen_by(principal: Principal, job: store.JobRow) -> JobView:
    """The job as this key may see it: without the read scope, not its output, error or history
    (a replayed Idempotency-Key names a job the key may not read)."""
    view = JobView.of(job)
    if "read" in principal.scopes:
        return view
    return view.model_copy(update={"output": None, "error": None, "history": []})


@router.get("/{job_id:uuid}", response_model=JobView, responses=responses(404))
async def get_job(job_id: uuid.UUID, state: StateDep, principal: ReaderDep, wait: WaitQuery = 0) -> JobView:
    """Read a job; with ``?wait=S``, answer as soon as it finishes or after S seconds."""
    check_wait(state, wait, principal=principal)
    return await wait_for(state, principal, job_id, wait_s=wait)


def check_wait(state: State, wait: float, *, principal: Principal) -> None:
    if wait > state.settings.max_wait_s:
        raise invalid(("query", "wait"), f"wait={wait} is over the limit max_wait_s={state.settings.max_wait_s}")
    if wait > 0 and "read" not in principal.scopes:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "waiting for a job's result needs the 'read' scope")


async def wait_for(state: State, principal: Principal, job_id: uuid.UUID, *, wait_s: float) -> JobView:
    """The job as soon as it is final (a PostgreSQL NOTIFY wakes the wait), or after ``wait_s``."""

    def read() -> JobView | None:
        with state.sessions() as session:
            job = store.get_job(session, tenant_id=principal.tenant_id, job_id=job_id)
            return None if job is None else JobView.of(job)

    deadline = time.monotonic() + wait_s
    while True:
        with state.waiter.subscribe(job_id) as wake:  # subscribed before the read: no wake-up is missed
            view = await run_in_threadpool(read)
            if view is None:
                raise HTTPException(status.HTTP_404_NOT_FOUND, NOT_FOUND)
            remaining = deadline - time.monotonic()
            if view.status in TERMINAL or remaining <= 0:
                return view
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.event.wait(), timeout=state.waiter.poll_interval_s(remaining))
            if (row := wake.row_of(principal.tenant_id)) is not None:
                return JobView.of(row)


@router.get("", response_model=JobPage, responses=responses())
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
        raise invalid(("query", "limit"), f"limit={limit} is over page_size_max={state.settings.page_size_max}")
    try:
        jobs, next_cursor = store.list_jobs(
            session, tenant_id=principal.tenant_id, status=status_, kind=kind, limit=limit, cursor=cursor
        )
    except ValueError as exc:
        raise invalid(("query", "cursor"), str(exc)) from None
    return JobPage(data=[JobView.of(j) for j in jobs], next_cursor=next_cursor)


@router.post("/{job_id}/cancel", response_model=JobView, responses=responses(404, 409, 413))
def cancel_job(job_id: uuid.UUID, session: SessionDep, principal: SubmitterDep) -> JobView:
    """Cancel a queued job at once; a running one ends ``cancelled`` when its attempt stops.
    Cancelling a job that already succeeded or failed is a 409."""
    with session.begin():
        job = lifecycle.cancel_job(session, tenant_id=principal.tenant_id, job_id=job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, NOT_FOUND)
    if job.status in (JobStatus.succeeded.value, JobStatus.failed.value):
        raise HTTPException(status.HTTP_409_CONFLICT, f"job {job_id} already {job.status}")
    return JobView.of(job)
