"""/v1/batches: bulk runs in (JSONL or JSON), progress, results out (JSONL, in input order), cancel."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from typing import Annotated, Any, BinaryIO, cast

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ValidationError
from pydantic_core import from_json
from starlette.datastructures import UploadFile

from jobs import batches, lifecycle
from jobs.ids import IdBuffer
from jobs.keys import Principal
from jobs.queues import BATCH_PRIORITY, MAX_BATCH_PRIORITY
from jobs.status import JobStatus
from producer import openai_batches
from producer.batch_input import BatchRefused, Parser, parse_jsonl, parse_list
from producer.deps import IdempotencyKey, ReaderDep, State, StateDep, SubmitterDep
from producer.errors import MSG_CHARS, Invalid, cut, invalid, located, responses, safe_loc
from producer.inputs import unstorable
from producer.openai_schemas import OpenAIBatchRequest
from producer.schemas import BatchOptions, BatchPage, BatchView, SubmitBatch
from producer.submit import accept_batch, check_webhook, json_field

router = APIRouter(prefix="/v1/batches", tags=["batches"])

NOT_FOUND = "no such batch"
SPOOL_IN_MEMORY_BYTES = 1 << 20
JSONL_TYPES = {"application/jsonl", "application/x-ndjson", "application/json-lines", "text/plain"}
UPLOAD_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"oneOf": [SubmitBatch.model_json_schema(), OpenAIBatchRequest.model_json_schema()]}
            },
            "application/jsonl": {"schema": {"type": "string", "description": "one JSON object per line"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "kind": {"type": "string"},
                        "priority": {"type": "integer", "minimum": 0, "maximum": MAX_BATCH_PRIORITY},
                        "metadata": {"type": "string", "description": "a JSON object"},
                        "webhook_url": {"type": "string"},
                    },
                    "required": ["file"],
                    "additionalProperties": False,  # read at most 8 fields: others are refused (400)
                }
            },
        },
    }
}


class LineErrorView(BaseModel):
    line: int
    custom_id: str | None
    loc: list[str | int]
    msg: str


class RefusalDetail(BaseModel):
    message: str
    errors: list[LineErrorView]


class BatchRefusal(BaseModel):
    """422 for bulk runs whose lines break a rule: the first bad lines, and nothing stored."""

    detail: RefusalDetail


REFUSED_DOC = {
    "model": Invalid | BatchRefusal,
    "description": "Bad lines (by line number and custom_id) or bad options; nothing was stored.",
}


RESULTS_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "One JSON object per line.",
        "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
    }
}


def refused(exc: BatchRefused) -> HTTPException:
    errors = [{**e.__dict__, "loc": safe_loc(e.loc), "msg": cut(e.msg, MSG_CHARS)} for e in exc.errors]
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, {"message": exc.message, "errors": errors})


async def read_body(request: Request) -> BinaryIO:
    """The body, spooled: kept in memory up to 1 MiB, then on disk, so a large bulk run does
    not sit in the API's memory while it is validated (the gate bounds its size)."""
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY_BYTES)  # noqa: SIM115  # closed by the caller
    try:
        async for chunk in request.stream():
            spool.write(chunk)
    except BaseException:
        spool.close()
        raise
    spool.seek(0)
    return cast(BinaryIO, spool)


def options_of(given: dict[str, Any]) -> BatchOptions:
    """The bulk run's options, checked as the JSON form's are (a 422 naming the field)."""
    try:
        options = BatchOptions.model_validate(given)
    except ValidationError as exc:
        raise located(exc, "body") from None
    if (found := unstorable(options.metadata)) is not None:
        raise invalid(("body", "metadata", *found[0]), found[1])
    return options


async def parse_request(request: Request, state: State, query: dict[str, Any]) -> tuple[Any, BatchOptions]:
    """The items (a JSON list, or a JSONL stream) and the options, from any of the three body forms."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=8)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise invalid(("body", "file"), "send the JSONL as a file part named 'file'")
        fields = {k: v for k, v in form.items() if isinstance(v, str) and k != "file"}
        metadata = json_field(fields, "metadata") if "metadata" in fields else {}
        options = options_of({**query, **fields, "metadata": metadata})
        source: Any = ("jsonl", upload.file)
    elif content_type == "application/json":
        try:
            with await read_body(request) as spooled:
                given = from_json(spooled.read())
            if isinstance(given, dict) and "input_file_id" in given:  # OpenAI's Batch API: the lines are a file's
                return ("openai", OpenAIBatchRequest.model_validate(given)), options_of(query)
            body = SubmitBatch.model_validate(given)
        except ValidationError as exc:
            # without the offending input: it may be bytes that are not UTF-8 (and it can be large)
            raise RequestValidationError(
                [{**e, "loc": ("body", *e["loc"]), "input": None} for e in exc.errors(include_url=False)]
            ) from None
        except ValueError as exc:
            raise invalid(("body",), f"not JSON: {exc}") from None
        options = options_of({**query, **body.model_dump(exclude={"items"}, exclude_unset=True)})
        source = ("list", body.items)
    elif content_type in JSONL_TYPES or not content_type:
        options = options_of(query)
        source = ("jsonl", await read_body(request))
    else:
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, "send JSONL, a JSON object or a multipart file")
    if options.webhook_url is not None:
        await check_webhook(options.webhook_url, state=state, loc=("webhook_url",))
    return source, options


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=BatchView,
    openapi_extra=UPLOAD_DOC,
    responses=responses(400, 404, 409, 413, 415, 429) | {422: REFUSED_DOC},
)
async def create_batch(
    request: Request,
    state: StateDep,
    principal: SubmitterDep,
    response: Response,
    kind: Annotated[str | None, Query(max_length=64, description="Batch-wide kind for lines that name none.")] = None,
    priority: Annotated[int, Query(ge=0, le=MAX_BATCH_PRIORITY)] = BATCH_PRIORITY,
    idempotency_key: IdempotencyKey = None,
) -> BatchView:
    """Accept a bulk run: every line is validated first; one bad line refuses the batch (422,
    with line numbers) and nothing is stored. Accepted items are stored with COPY and
    published in chunks at a priority below single jobs. With an ``Idempotency-Key``, sending
    the same run again returns the stored one (``Idempotent-Replayed: true``), never a second."""
    query = {"priority": priority} | ({"kind": kind} if kind is not None else {})
    (form, payload), options = await parse_request(request, state, query)
    if form == "openai":
        view, created = await accept_openai(state, payload, principal=principal, idempotency_key=idempotency_key)
        if not created:
            response.status_code = status.HTTP_200_OK
            response.headers["Idempotent-Replayed"] = "true"
        return view
    parser = Parser(
        models=state.models,
        default_kind=options.kind,
        max_lines=state.settings.batch_max_lines,
        max_errors=state.settings.batch_max_errors,
    )

    def parse(p: Parser) -> dict[str, IdBuffer]:
        return parse_list(payload, p) if form == "list" else parse_jsonl(payload, p)

    try:
        view, created = await run_in_threadpool(
            accept_batch, state, parse, parser, principal=principal, options=options, idempotency_key=idempotency_key
        )
    except BatchRefused as exc:
        raise refused(exc) from None
    finally:
        if form == "jsonl":
            payload.close()  # the spooled body (or the upload's own spool)
    if not created:
        response.status_code = status.HTTP_200_OK
        response.headers["Idempotent-Replayed"] = "true"
    return view


async def accept_openai(
    state: State, body: OpenAIBatchRequest, *, principal: Principal, idempotency_key: str | None
) -> tuple[BatchView, bool]:
    """An OpenAI batch: its input file's lines, bad ones kept for the error file (a 422 only
    for a file with no lines or too many)."""
    try:
        content = await run_in_threadpool(
            openai_batches.input_content, state, tenant_id=principal.tenant_id, file_id=body.input_file_id
        )
    except LookupError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    try:
        return await run_in_threadpool(
            openai_batches.accept, state, body, principal=principal, content=content, idempotency_key=idempotency_key
        )
    except BatchRefused as exc:
        raise refused(exc) from None


def view(state: State, tenant_id: uuid.UUID, batch_id: uuid.UUID) -> BatchView:
    with state.sessions() as session:
        batch = batches.get_batch(session, tenant_id=tenant_id, batch_id=batch_id)
        if batch is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, NOT_FOUND)
        return BatchView.of(batch, batches.counts(session, batch_ids=[batch.id])[batch.id])


@router.get("/{batch_id}", response_model=BatchView, responses=responses(404))
def get_batch(batch_id: uuid.UUID, state: StateDep, principal: ReaderDep) -> BatchView:
    """Status and counts (total, queued, running, succeeded, failed, cancelled)."""
    return view(state, principal.tenant_id, batch_id)


@router.get("", response_model=BatchPage, responses=responses())
def list_batches(
    state: StateDep,
    principal: ReaderDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: str | None = None,
    after: Annotated[uuid.UUID | None, Query(description="OpenAI's paging: the id of the last run seen.")] = None,
) -> BatchPage:
    """The tenant's bulk runs, newest first: page on with ``next_cursor``, or with ``after``
    and ``has_more`` as OpenAI's SDK does."""
    with state.sessions() as session:
        try:
            rows, next_cursor = batches.list_batches(
                session, tenant_id=principal.tenant_id, limit=limit, cursor=cursor, after=after
            )
        except ValueError as exc:
            raise invalid(("query", "after" if after is not None else "cursor"), str(exc)) from None
        tallies = batches.counts(session, batch_ids=[b.id for b in rows])
        data = [BatchView.of(b, tallies[b.id]) for b in rows]
    return BatchPage(
        data=data,
        next_cursor=next_cursor,
        has_more=next_cursor is not None,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
    )


@router.get(
    "/{batch_id}/results",
    response_class=StreamingResponse,
    responses=RESULTS_DOC | responses(404),
)
def batch_results(
    batch_id: uuid.UUID,
    state: StateDep,
    principal: ReaderDep,
    status_: Annotated[JobStatus | None, Query(alias="status")] = None,
) -> StreamingResponse:
    """JSONL in input order: custom_id, line, job_id, status, output or error, artifact URLs.
    Works while the batch runs (items not yet finished show their current status)."""
    with state.sessions() as session:
        if batches.get_batch(session, tenant_id=principal.tenant_id, batch_id=batch_id) is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, NOT_FOUND)

    def lines() -> Iterator[str]:
        with state.sessions() as session:
            yield from batches.stream_results(session, tenant_id=principal.tenant_id, batch_id=batch_id, status=status_)

    return StreamingResponse(lines(), media_type="application/x-ndjson")


@router.post("/{batch_id}/cancel", response_model=BatchView, responses=responses(404, 409, 413))
def cancel_batch(batch_id: uuid.UUID, state: StateDep, principal: SubmitterDep) -> BatchView:
    """Queued items are cancelled at once; running ones end cancelled; finished results stay.
    A run that had finished before the cancel is a 409: it stays as it ended."""
    with state.sessions.begin() as session:
        if lifecycle.cancel_batch(session, tenant_id=principal.tenant_id, batch_id=batch_id) is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, NOT_FOUND)
    return view(state, principal.tenant_id, batch_id)
