"""The routes OpenAI's SDK calls, over mlq's jobs: each request is one job per input,
submitted and awaited, stored and visible under /v1/jobs like any other, batched by the
worker with everything else of its kind. Refusals take OpenAI's shape (producer/errors.py).

    POST /v1/embeddings         a text or a list of texts -> kind ``embedding``, one job each
    POST /v1/chat/completions   messages -> kind ``chat``, one job
    POST /v1/completions        a prompt or a list of prompts -> kind ``text-generation``, one job each
    POST /v1/moderations        texts, or the text and image parts of one input -> kind ``moderation``
    POST /v1/images/generations a prompt -> kind ``image-generation``, one job making n images
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from jobs import store
from jobs.errors import Conflict, InvalidField, InvalidInput
from jobs.keys import Principal
from jobs.status import JobStatus
from producer.deps import State, StateDep, SubmitterDep
from producer.errors import openai_responses
from producer.intake import Submission
from producer.openai_calls import CHAT, COMPLETIONS, EMBEDDINGS, MODERATIONS, Done, Endpoint
from producer.openai_schemas import (
    ChatAnswer,
    ChatRequest,
    CompletionAnswer,
    CompletionRequest,
    EmbeddingsAnswer,
    EmbeddingsRequest,
    ImageData,
    ImagesAnswer,
    ImagesRequest,
    ModerationAnswer,
    ModerationRequest,
)
from producer.routes.jobs import accepted_and_awaited
from producer.routes.models import kind_named
from producer.schemas import JobView, SubmitJob
from producer.submit import prepared

router = APIRouter(prefix="/v1", tags=["openai"])

# an image job's fields by the names OpenAI's request gives them (the first: the one a failed job names)
IMAGES = {"prompt": "prompt", "num_images": "n", "width": "size", "height": "size"}

IdempotencyKey = Annotated[
    str | None, Header(min_length=1, max_length=240, description="Each input's job gets it, with #index.")
]


@router.post("/embeddings", response_model=EmbeddingsAnswer, responses=openai_responses(404, 409, 413, 429, 500, 504))
async def create_embeddings(
    body: EmbeddingsRequest, state: StateDep, principal: SubmitterDep, idempotency_key: IdempotencyKey = None
) -> BaseModel:
    """Embed a text or a list of texts: one ``embedding`` job each, answered when all are done."""
    return await call(EMBEDDINGS, body, state=state, principal=principal, idempotency_key=idempotency_key)


@router.post("/chat/completions", response_model=ChatAnswer, responses=openai_responses(404, 409, 413, 429, 500, 504))
async def create_chat_completion(
    body: ChatRequest, state: StateDep, principal: SubmitterDep, idempotency_key: IdempotencyKey = None
) -> BaseModel:
    """A chat completion: the conversation is one ``chat`` job, answered when it is done."""
    return await call(CHAT, body, state=state, principal=principal, idempotency_key=idempotency_key)


@router.post("/completions", response_model=CompletionAnswer, responses=openai_responses(404, 409, 413, 429, 500, 504))
async def create_completion(
    body: CompletionRequest, state: StateDep, principal: SubmitterDep, idempotency_key: IdempotencyKey = None
) -> BaseModel:
    """A completion of a prompt, or of each of a list of prompts (a ``text-generation`` job each)."""
    return await call(COMPLETIONS, body, state=state, principal=principal, idempotency_key=idempotency_key)


@router.post("/moderations", response_model=ModerationAnswer, responses=openai_responses(404, 409, 413, 429, 500, 504))
async def create_moderation(
    body: ModerationRequest, state: StateDep, principal: SubmitterDep, idempotency_key: IdempotencyKey = None
) -> BaseModel:
    """Moderate a text, each of a list of texts (a result each), or the text and image parts
    of one input (a job each, one result: flagged where any part is, each score its highest)."""
    return await call(MODERATIONS, body, state=state, principal=principal, idempotency_key=idempotency_key)


async def call(
    endpoint: Endpoint, body: BaseModel, *, state: State, principal: Principal, idempotency_key: str | None
) -> BaseModel:
    """A request run as its jobs, submitted and awaited, and answered as ``endpoint`` answers."""
    kind = served_kind(state, endpoint.model_of(body), wanted=endpoint.kind)
    made = endpoint.jobs(body)
    views = await run_all(
        state, with_read(principal), kind, made.inputs, idempotency_key, listed=made.listed, rename=endpoint.rename
    )
    done = [Done(view.id, view.created_at, view.output or {}) for view in views]
    return endpoint.answer(made.options, state.models.kinds[kind].model, done)


@router.post(
    "/images/generations", response_model=ImagesAnswer, responses=openai_responses(404, 409, 413, 429, 500, 504)
)
async def create_images(
    body: ImagesRequest,
    request: Request,
    state: StateDep,
    principal: SubmitterDep,
    idempotency_key: IdempotencyKey = None,
) -> ImagesAnswer:
    """``n`` images of a prompt: one ``image-generation`` job; each image as base64, or as the
    URL of the job's artifact (fetched with the same key)."""
    kind = served_kind(state, body.model or "image-generation", wanted="image-generation")
    item: dict[str, object] = {"prompt": body.prompt, "num_images": body.n}
    if body.size is not None:
        width, height = body.size.split("x")
        item.update(width=int(width), height=int(height))
    [view] = await run_all(state, with_read(principal), kind, [item], idempotency_key, listed=None, rename=IMAGES)
    names = [image["artifact"] for image in (view.output or {}).get("images", [])]
    if body.response_format == "url":
        base = str(request.base_url).rstrip("/")
        data = [ImageData(url=f"{base}/v1/jobs/{view.id}/artifacts/{name}") for name in names]
    else:
        pngs = await files_of(state, tenant_id=principal.tenant_id, job_id=view.id, names=names)
        data = [ImageData(b64_json=base64.b64encode(png).decode()) for png in pngs]
    return ImagesAnswer(created=int(view.created_at.timestamp()), data=data, mlq={"job_ids": [str(view.id)]})


async def files_of(state: State, *, tenant_id: uuid.UUID, job_id: uuid.UUID, names: list[str]) -> list[bytes]:
    """The bytes of a finished job's artifacts, read from the artifact store."""

    def read() -> list[bytes]:
        with state.sessions() as session:
            stored = {a.name: a.uri for a in store.list_artifacts(session, tenant_id=tenant_id, job_id=job_id)}
        return [state.artifacts.open(stored[name]) for name in names]

    return await run_in_threadpool(read)


def with_read(principal: Principal) -> Principal:
    """The answer carries the outputs: the key needs ``read`` as well as ``submit``."""
    if "read" not in principal.scopes:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this route answers with results: the key needs 'read' too")
    return principal


def served_kind(state: State, model: str, *, wanted: str) -> str:
    """The kind ``model`` names (a kind, or a served model's name), when it is ``wanted``."""
    kind = kind_named(state.models, model)
    if kind is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no model {model!r} here; GET /v1/models lists them")
    if kind != wanted:
        raise InvalidField(("body", "model"), f"model {model!r} serves {kind}, not {wanted}")
    return kind


async def run_all(
    state: State,
    principal: Principal,
    kind: str,
    inputs: list[dict[str, object]],
    idempotency_key: str | None,
    *,
    listed: str | None,
    rename: dict[str, str],
    uploads: dict[str, tuple[bytes, str]] | None = None,
) -> list[JobView]:
    """One job per input, committed together (the intake groups them), awaited together. A
    refused input is named as the request named it: a job field by its OpenAI name
    (``rename``: ``{"max_new_tokens": "max_tokens"}``), an item of the ``listed`` parameter by
    its index (``input[2]``). Nothing is stored then. ``uploads`` are files every input may
    name as ``{"artifact": name}`` (field -> bytes and content type), as on /v1/jobs/upload."""
    submissions: list[Submission] = []
    for index, item in enumerate(inputs):
        key = None if idempotency_key is None else f"{idempotency_key}#{index}"
        try:
            job = SubmitJob(kind=kind, input=item)
            submissions.append(await prepared(state, job, principal=principal, idempotency_key=key, uploads=uploads))
        except InvalidField as exc:
            raise InvalidField(request_loc(exc.loc, rename, listed=listed, index=index), str(exc)) from None
    wait_s = state.settings.openai_wait_s or state.settings.max_wait_s
    done = await asyncio.gather(*(accepted_and_awaited(state, s, wait_s=wait_s) for s in submissions))
    views = [view for view, _ in done]
    for index, view in enumerate(views):
        where = request_loc((), rename, listed=listed, index=index)
        if view.status == JobStatus.succeeded:
            continue
        if view.status in (JobStatus.queued, JobStatus.running):
            raise HTTPException(
                status.HTTP_504_GATEWAY_TIMEOUT,
                f"job {view.id} is still {view.status.value} after {wait_s:g}s; GET /v1/jobs/{view.id} has it later",
            )
        if view.status == JobStatus.cancelled:  # by its tenant: no fault of the server's
            again = "; its Idempotency-Key names it: send another key to run it again" if idempotency_key else ""
            raise Conflict(f"job {view.id} was cancelled before it finished{again}")
        error = view.error
        if error is not None and error.code == InvalidInput.code:
            raise InvalidField(where, error.message or "invalid input")
        reason = f"{error.code}: {error.message}" if error is not None else view.status.value
        raise HTTPException(status.HTTP_500_INTERNAL_SERVER_ERROR, f"job {view.id} ended {view.status.value}: {reason}")
    return views


def request_loc(
    loc: tuple[object, ...], rename: dict[str, str], *, listed: str | None, index: int
) -> tuple[object, ...]:
    """Where a job's refused field was in the OpenAI request: ``("body", "input", "text")``
    of the third text becomes ``("body", "input", 2)``."""
    field = str(loc[2]) if len(loc) > 2 and loc[:2] == ("body", "input") else ""
    name = rename.get(field, field) or next(iter(rename.values()))
    return ("body", name, index) if listed is not None and name == listed else ("body", name)
