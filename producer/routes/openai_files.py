"""/v1/files: OpenAI's Files API, for the Batch API. Uploads (``purpose=batch``) keep their
bytes in the artifact store; a run's output and error files appear here once it is done, and
their content is read from its jobs as it is asked for (producer/openai_batches.py)."""

from __future__ import annotations

import re
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from starlette.datastructures import UploadFile

from jobs import files
from jobs.errors import InvalidField
from jobs.tables import Batch, File
from producer.deps import ReaderDep, State, StateDep, SubmitterDep
from producer.errors import openai_responses
from producer.openai_batches import counted, result_lines
from producer.openai_schemas import FileDeleted, FileList, FileObject

router = APIRouter(prefix="/v1/files", tags=["openai"])

NOT_FOUND = "no such file (a run's output and error files appear once it is done)"
CONTENT_NAME = "content.jsonl"
UNSAFE_FILENAME = re.compile(r"[^A-Za-z0-9._ -]")
UPLOAD_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "purpose": {"type": "string", "enum": ["batch"]},
                    },
                    "required": ["file", "purpose"],
                    "additionalProperties": False,
                }
            }
        },
    }
}
CONTENT_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The file's bytes (JSONL).",
        "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
    }
}


@router.post("", response_model=FileObject, openapi_extra=UPLOAD_DOC, responses=openai_responses(413, 415, 429))
async def upload_file(request: Request, state: StateDep, principal: SubmitterDep) -> FileObject:
    """Upload a Batch API input: a JSONL file, ``purpose=batch``. Its lines are checked when a
    batch is made from it (a bad line then goes to the batch's error file)."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "multipart/form-data":
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, "send a multipart form with file and purpose")
    form = await request.form(max_files=1, max_fields=2)
    if unknown := sorted(set(form) - {"file", "purpose"}):
        raise InvalidField(("body", unknown[0]), "unknown field; send file and purpose")
    purpose, upload = form.get("purpose"), form.get("file")
    if purpose != "batch":
        raise InvalidField(("body", "purpose"), "only purpose=batch files are kept here")
    if not isinstance(upload, UploadFile):
        raise InvalidField(("body", "file"), "send the JSONL as a file part named 'file'")
    data = await upload.read()
    filename = UNSAFE_FILENAME.sub("_", upload.filename or "")[:255] or "batch.jsonl"
    file_id = uuid.uuid4()

    def store() -> File:
        stored = state.artifacts.put(job_id=file_id, name=CONTENT_NAME, data=data, content_type="application/jsonl")
        try:
            with state.sessions.begin() as session:
                return files.insert_file(
                    session, file_id=file_id, tenant_id=principal.tenant_id, purpose="batch", filename=filename,
                    size=stored.size_bytes, uri=stored.uri,
                )  # fmt: skip
        except BaseException:
            state.artifacts.discard(job_id=file_id)
            raise

    return object_of(await run_in_threadpool(store), size=len(data))


@router.get("", response_model=FileList, responses=openai_responses())
def list_files(
    state: StateDep,
    principal: ReaderDep,
    purpose: Annotated[str | None, Query(max_length=32)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    order: Literal["asc", "desc"] = "desc",
    after: Annotated[uuid.UUID | None, Query(description="The id of the last file seen.")] = None,
) -> FileList:
    """The tenant's files, newest first by default, a page at a time (``after``, ``has_more``)."""
    with state.sessions() as session:
        try:
            rows, more = files.list_files(
                session, tenant_id=principal.tenant_id, limit=limit, after=after, purpose=purpose,
                newest_first=order == "desc",
            )  # fmt: skip
        except ValueError as exc:
            raise InvalidField(("query", "after"), str(exc)) from None
    data = [object_of(row, size=counted(state, row)) for row in rows]
    return FileList(
        data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None, has_more=more
    )


@router.get("/{file_id}", response_model=FileObject, responses=openai_responses(404))
def get_file(file_id: uuid.UUID, state: StateDep, principal: ReaderDep) -> FileObject:
    found = found_file(state, principal.tenant_id, file_id)
    return object_of(found, size=counted(state, found))


@router.get("/{file_id}/content", response_class=Response, responses=CONTENT_DOC | openai_responses(404))
def file_content(file_id: uuid.UUID, state: StateDep, principal: ReaderDep) -> Response:
    """An upload's bytes; a run's output or error file as JSONL, in input order."""
    found = found_file(state, principal.tenant_id, file_id)
    if found.uri is not None:
        return Response(state.artifacts.open(found.uri), media_type="application/x-ndjson")

    def lines() -> Any:
        with state.sessions() as session:
            batch = session.get(Batch, found.batch_id)
            if batch is not None:
                yield from result_lines(session, batch=batch, part=found.part or "")

    return StreamingResponse(lines(), media_type="application/x-ndjson")


@router.delete("/{file_id}", response_model=FileDeleted, responses=openai_responses(404))
def delete_file(file_id: uuid.UUID, state: StateDep, principal: SubmitterDep) -> FileDeleted:
    """Delete a file (a batch made from an upload keeps its lines: they are its jobs)."""
    with state.sessions.begin() as session:
        found = files.delete_file(session, tenant_id=principal.tenant_id, file_id=file_id)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, NOT_FOUND)
    if found.uri is not None:
        state.artifacts.discard(job_id=file_id)
    return FileDeleted(id=file_id)


def found_file(state: State, tenant_id: uuid.UUID, file_id: uuid.UUID) -> File:
    with state.sessions() as session:
        found = files.get_file(session, tenant_id=tenant_id, file_id=file_id)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, NOT_FOUND)
    return found


def object_of(row: File, *, size: int) -> FileObject:
    return FileObject(
        id=row.id, bytes=size, created_at=int(row.created_at.timestamp()), filename=row.filename, purpose=row.purpose
    )
