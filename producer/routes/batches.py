"""/v1/batches: bulk runs in (JSONL or JSON), progress, results out (JSONL, in input order), cancel."""

from __future__ import annotations

import json
import tempfile
import uuid
from collections.abc import Iterator
from typing import Annotated, Any, BinaryIO, cast

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from jobs import batches
from jobs.ids import IdBuffer
from jobs.queues import BATCH_PRIORITY, MAX_BATCH_PRIORITY
from jobs.status import JobStatus
from producer.batch_input import BatchRefused, Parser, parse_jsonl, parse_list
from producer.deps import ReaderDep, State, StateDep, SubmitterDep
from producer.schemas import BatchPage, BatchView, SubmitBatch
from producer.submit import accept_batch, check_webhook

router = APIRouter(prefix="/v1/batches", tags=["batches"])

NOT_FOUND = "no such batch"
SPOOL_IN_MEMORY_BYTES = 1 << 20
JSONL_TYPES = {"application/jsonl", "application/x-ndjson", "application/json-lines", "text/plain"}
UPLOAD_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": SubmitBatch.model_json_schema()},
            "application/jsonl": {"schema": {"type": "string", "description": "one JSON object per line"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "kind": {"type": "string"},
                        "priority": {"type": "integer"},
                        "metadata": {"type": "string", "description": "a JSON object"},
                        "webhook_url": {"type": "string"},
                    },
                    "required": ["file"],
                }
            },
        },
    }
}


def refused(exc: BatchRefused) -> HTTPException:
    return HTTPException(
        status.HTTP_422_UNPROCESSABLE_CONTENT,
        {"message": exc.message, "errors": [e.__dict__ for e in exc.errors]},
    )


async def read_body(request: Request, *, max_bytes: int) -> BinaryIO:
    """The body, spooled: kept in memory up to 1 MiB, then on disk, so a large bulk run does
    not sit in the API's memory while it is validated."""
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY_BYTES)  # noqa: SIM115  # closed by the caller
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            spool.close()
            raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, f"the batch is over batch_max_bytes={max_bytes}")
        spool.write(chunk)
    spool.seek(0)
    return cast(BinaryIO, spool)


def form_options(fields: dict[str, Any]) -> dict[str, Any]:
    try:
        metadata = json.loads(fields.get("metadata") or "{}")
        return {
            "kind": fields.get("kind") or None,
            "priority": int(fields.get("priority", BATCH_PRIORITY)),
            "metadata": metadata,
            "webhook_url": fields.get("webhook_url") or None,
        }
    except (ValueError, json.JSONDecodeError) as exc:
        raise RequestValidationError(
            [{"loc": ("body",), "msg": f"bad form field: {exc}", "type": "value_error"}]
        ) from None


async def parse_request(request: Request, state: State, kind: str | None, priority: int) -> tuple[Any, dict[str, Any]]:
    """The validated items and the batch options, from any of the three body forms."""
    settings = state.settings
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    options: dict[str, Any] = {"kind": kind, "priority": priority, "metadata": {}, "webhook_url": None}
    if content_type == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=8)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "send the JSONL as a file part named 'file'")
        if (upload.size or 0) > settings.batch_max_bytes:
            raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, f"over batch_max_bytes={settings.batch_max_bytes}")
        options.update(form_options({k: v for k, v in form.items() if isinstance(v, str)}))
        source: Any = ("jsonl", upload.file)
    elif content_type == "application/json":
        try:
            with await read_body(request, max_bytes=settings.batch_max_bytes) as spooled:
                body = SubmitBatch.model_validate_json(spooled.read())
        except ValidationError as exc:
            raise RequestValidationError(
                # without the offending input: it may be bytes that are not UTF-8 (and it can be large)
                [{**e, "loc": ("body", *e["loc"]), "input": None} for e in exc.errors(include_url=False)]
            ) from None
        options.update(body.model_dump(exclude={"items"}))
        source = ("list", body.items)
    elif content_type in JSONL_TYPES or not content_type:
        source = ("jsonl", await read_body(request, max_bytes=settings.batch_max_bytes))
    else:
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, "send JSONL, a JSON object or a multipart file")
    if not 0 <= options["priority"] <= MAX_BATCH_PRIORITY:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"batch priority must be 0..{MAX_BATCH_PRIORITY}: bulk runs stay below single jobs",
        )
    if options["webhook_url"] is not None:
        await run_in_threadpool(check_webhook, options["webhook_url"], state=state, loc=("webhook_url",))
    return source, options


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=BatchView, openapi_extra=UPLOAD_DOC)
async def create_batch(
    request: Request,
    state: StateDep,
    principal: SubmitterDep,
    kind: Annotated[str | None, Query(description="Batch-wide kind for lines that name none.")] = None,
    priority: Annotated[int, Query(ge=0, le=MAX_BATCH_PRIORITY)] = BATCH_PRIORITY,
) -> BatchView:
    """Accept a bulk run: every line is validated first; one bad line refuses the batch (422,
    with line numbers) and nothing is stored. Accepted items are stored with COPY and
    published in chunks at a priority below single jobs."""
    (form, payload), options = await parse_request(request, state, kind, priority)
    parser = Parser(
        models=state.models,
        default_kind=options["kind"],
        max_lines=state.settings.batch_max_lines,
        max_errors=state.settings.batch_max_errors,
    )

    def accept() -> BatchView:
        def parse(p: Parser) -> dict[str, IdBuffer]:
            return parse_list(payload, p) if form == "list" else parse_jsonl(payload, p)

        batch, total = accept_batch(
            state, parse, parser, principal=principal, priority=options["priority"], metadata=options["metadata"],
            webhook_url=options["webhook_url"],
        )  # fmt: skip
        return BatchView.of(batch, batches.Counts(total=total, queued=total))

    try:
        return await run_in_threadpool(accept)
    except BatchRefused as exc:
        raise refused(exc) from None
    finally:
        if form == "jsonl":
            payload.close()  # the spooled body (or the upload's own spool)


def view(state: State, tenant_id: uuid.UUID, batch_id: uuid.UUID) -> BatchView:
    with state.sessions() as session:
        batch = batches.get_batch(session, tenant_id=tenant_id, batch_id=batch_id)
        if batch is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, NOT_FOUND)
        return BatchView.of(batch, batches.counts(session, batch_ids=[batch.id])[batch.id])


@router.get("/{batch_id}", response_model=BatchView)
def get_batch(batch_id: uuid.UUID, state: StateDep, principal: ReaderDep) -> BatchView:
    """Status and counts (total, queued, running, succeeded, failed, cancelled)."""
    return view(state, principal.tenant_id, batch_id)


@router.get("", response_model=BatchPage)
def list_batches(
    state: StateDep, principal: ReaderDep, limit: Annotated[int, Query(ge=1, le=100)] = 20, cursor: str | None = None
) -> BatchPage:
    with state.sessions() as session:
        try:
            rows, next_cursor = batches.list_batches(session, tenant_id=principal.tenant_id, limit=limit, cursor=cursor)
        except ValueError as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
        tallies = batches.counts(session, batch_ids=[b.id for b in rows])
        return BatchPage(data=[BatchView.of(b, tallies[b.id]) for b in rows], next_cursor=next_cursor)


@router.get(
    "/{batch_id}/results", response_class=StreamingResponse, responses={200: {"content": {"application/x-ndjson": {}}}}
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


@router.post("/{batch_id}/cancel", response_model=BatchView)
def cancel_batch(batch_id: uuid.UUID, state: StateDep, principal: SubmitterDep) -> BatchView:
    """Queued items are cancelled at once; running ones end cancelled; finished results stay."""
    with state.sessions.begin() as session:
        if batches.cancel_batch(session, tenant_id=principal.tenant_id, batch_id=batch_id) is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, NOT_FOUND)
    return view(state, principal.tenant_id, batch_id)
