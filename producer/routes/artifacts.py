"""/v1/jobs/{id}/artifacts/{name}: generated files (PNG, WAV) and uploaded inputs."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, HTTPException, Response, status
from fastapi.concurrency import run_in_threadpool

from jobs import store
from producer.deps import ReaderDep, StateDep
from producer.schemas import ArtifactView

router = APIRouter(prefix="/v1/jobs/{job_id}/artifacts", tags=["artifacts"])


@router.get("", response_model=list[ArtifactView])
def list_artifacts(job_id: uuid.UUID, state: StateDep, principal: ReaderDep) -> list[ArtifactView]:
    with state.sessions() as session:
        if store.get_job(session, tenant_id=principal.tenant_id, job_id=job_id) is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such job")
        return [ArtifactView.of(a) for a in store.list_artifacts(session, tenant_id=principal.tenant_id, job_id=job_id)]


@router.get("/{name}", response_class=Response, responses={200: {"content": {"application/octet-stream": {}}}})
async def get_artifact(job_id: uuid.UUID, name: str, state: StateDep, principal: ReaderDep) -> Response:
    """The file's bytes with its content type."""

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
    return Response(
        content=data, media_type=content_type, headers={"Content-Disposition": f'inline; filename="{name}"'}
    )
