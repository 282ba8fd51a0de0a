"""/v1/jobs/{id}/artifacts/{name}: generated files (PNG, WAV) and uploaded inputs."""

from __future__ import annotations

import re
import uuid
from typing import Any

from fastapi import APIRouter, HTTPException, Response, status
from fastapi.concurrency import run_in_threadpool

from jobs import store
from producer.deps import ReaderDep, StateDep
from producer.errors import responses
from producer.schemas import ArtifactView

router = APIRouter(prefix="/v1/jobs/{job_id}/artifacts", tags=["artifacts"])

# Shown in the browser as they are: images and audio a model made or was given. Any other
# stored type (a URL input served as text/html or image/svg+xml, say) is a download, never a
# page on the API's origin, where the ops page keeps an admin key.
INLINE_TYPES = frozenset({
    "image/png", "image/jpeg", "image/gif", "image/webp",
    "audio/wav", "audio/x-wav", "audio/wave", "audio/mpeg", "audio/flac", "audio/ogg",
})  # fmt: skip
SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")
BINARY = {"schema": {"type": "string", "format": "binary"}}
FILE_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The file: an image or audio inline with its type, anything else as application/octet-stream.",
        "content": dict.fromkeys([*sorted(INLINE_TYPES), "application/octet-stream"], BINARY),
    }
}


def artifact_response(data: bytes, *, content_type: str, name: str) -> Response:
    """A stored file as the API serves it: inline only when it is an image or audio, else as an
    attachment of type application/octet-stream; never sniffed, never run as a page."""
    inline = content_type in INLINE_TYPES
    filename = SAFE_NAME.sub("_", name)[:100] or "artifact"
    return Response(
        content=data,
        media_type=content_type if inline else "application/octet-stream",
        headers={
            "Content-Disposition": f'{"inline" if inline else "attachment"}; filename="{filename}"',
            "Content-Security-Policy": "default-src 'none'; sandbox",
        },
    )


@router.get("", response_model=list[ArtifactView], responses=responses(404))
def list_artifacts(job_id: uuid.UUID, state: StateDep, principal: ReaderDep) -> list[ArtifactView]:
    with state.sessions() as session:
        if store.get_job(session, tenant_id=principal.tenant_id, job_id=job_id) is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such job")
        return [ArtifactView.of(a) for a in store.list_artifacts(session, tenant_id=principal.tenant_id, job_id=job_id)]


@router.get("/{name}", response_class=Response, responses=FILE_DOC | responses(404))
async def get_artifact(job_id: uuid.UUID, name: str, state: StateDep, principal: ReaderDep) -> Response:
    """The file's bytes: images and audio inline with their type, anything else as a download."""

    def load() -> tuple[bytes, str] | None:
        with state.sessions() as session:
            found = store.get_artifact(session, tenant_id=principal.tenant_id, job_id=job_id, name=name)
            if found is None:
                return None
            return state.artifacts.open(found.uri), found.content_type

    loaded = await run_in_threadpool(load)
    if loaded is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such artifact")
    data, content_type = loaded
    return artifact_response(data, content_type=content_type, name=name)
