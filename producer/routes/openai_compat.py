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
import struct
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool

from jobs import store
from jobs.errors import InvalidField, InvalidInput
from jobs.keys import Principal
from jobs.status import JobStatus
from producer.deps import State, StateDep, SubmitterDep
from producer.errors import openai_responses
from producer.intake import Submission
from producer.openai_schemas import (
    AssistantMessage,
    ChatAnswer,
    ChatChoice,
    ChatRequest,
    CompletionAnswer,
    CompletionChoice,
    CompletionRequest,
    CompletionUsage,
    ContentPart,
    Embedding,
    EmbeddingsAnswer,
    EmbeddingsRequest,
    ImageData,
    ImagesAnswer,
    ImagesRequest,
    ModerationAnswer,
    ModerationPart,
    ModerationRequest,
    ModerationResult,
    Sampling,
    Usage,
)
from producer.routes.jobs import accepted_and_awaited
from producer.routes.models import kind_named
from producer.schemas import JobView, SubmitJob
from producer.submit import prepared

router = APIRouter(prefix="/v1", tags=["openai"])

# a job's fields by the names OpenAI's requests give them (the first: the one a failed job names)
EMBEDDING = {"text": "input"}
CHAT = {"messages": "messages", "max_new_tokens": "max_completion_tokens"}
COMPLETION = {"prompt": "prompt", "max_new_tokens": "max_tokens"}
MODERATION = {"text": "input", "image": "input"}
IMAGES = {"prompt": "prompt", "num_images": "n", "width": "size", "height": "size"}

IdempotencyKey = Annotated[str | None, Header(max_length=240, description="Each input's job gets it, with #index.")]


@router.post("/embeddings", response_model=EmbeddingsAnswer, responses=openai_responses(404, 409, 413, 429, 500, 504))
async def create_embeddings(
    body: EmbeddingsRequest, state: StateDep, principal: SubmitterDep, idempotency_key: IdempotencyKey = None
) -> EmbeddingsAnswer:
    """Embed a text or a list of texts: one ``embedding`` job each, answered when all are done."""
    kind = served_kind(state, body.model, wanted="embedding")
    if body.dimensions is not None:
        raise InvalidField(("body", "dimensions"), "dimensions is not supported: the size is the model's own")
    texts = [body.input] if isinstance(body.input, str) else body.input
    listed = None if isinstance(body.input, str) else "input"
    items: list[dict[str, object]] = [{"text": t} for t in texts]
    views = await run_all(state, with_read(principal), kind, items, idempotency_key, listed=listed, rename=EMBEDDING)
    data = []
    for index, view in enumerate(views):
        values = (view.output or {}).get("embedding", [])
        if body.encoding_format == "base64":  # little-endian float32, as the SDK decodes it
            values = base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
        data.append(Embedding(index=index, embedding=values))
    tokens = sum(int((view.output or {}).get("tokens") or 0) for view in views)
    return EmbeddingsAnswer(
        data=data,
        model=state.models.kinds[kind].model,
        usage=Usage(prompt_tokens=tokens, total_tokens=tokens),
        mlq={"job_ids": [str(view.id) for view in views]},
    )


@router.post("/chat/completions", response_model=ChatAnswer, responses=openai_responses(404, 409, 413, 429, 500, 504))
async def create_chat_completion(
    body: ChatRequest, state: StateDep, principal: SubmitterDep, idempotency_key: IdempotencyKey = None
) -> ChatAnswer:
    """A chat completion: the conversation is one ``chat`` job, answered when it is done."""
    kind = served_kind(state, body.model, wanted="chat")
    refuse_streaming(body)
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": text_of(m.content)}
                for m in body.messages]  # fmt: skip
    item = {"messages": messages, **generation_options(body, max_tokens=body.max_completion_tokens or body.max_tokens)}
    [view] = await run_all(state, with_read(principal), kind, [item], idempotency_key, listed=None, rename=CHAT)
    output = view.output or {}
    return ChatAnswer(
        id=f"chatcmpl-{view.id}",
        created=int(view.created_at.timestamp()),
        model=state.models.kinds[kind].model,
        choices=[
            ChatChoice(
                index=0,
                message=AssistantMessage(content=output["message"]["content"]),
                finish_reason=output["finish_reason"],
            )
        ],
        usage=usage_of([view]),
        mlq={"job_ids": [str(view.id)]},
    )


@router.post("/completions", response_model=CompletionAnswer, responses=openai_responses(404, 409, 413, 429, 500, 504))
async def create_completion(
    body: CompletionRequest, state: StateDep, principal: SubmitterDep, idempotency_key: IdempotencyKey = None
) -> CompletionAnswer:
    """A completion of a prompt, or of each of a list of prompts (a ``text-generation`` job each)."""
    kind = served_kind(state, body.model, wanted="text-generation")
    refuse_streaming(body)
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    listed = None if isinstance(body.prompt, str) else "prompt"
    options = generation_options(body, max_tokens=body.max_tokens)
    items: list[dict[str, object]] = [{"prompt": p, **options} for p in prompts]
    views = await run_all(state, with_read(principal), kind, items, idempotency_key, listed=listed, rename=COMPLETION)
    return CompletionAnswer(
        id=f"cmpl-{views[0].id}",
        created=int(views[0].created_at.timestamp()),
        model=state.models.kinds[kind].model,
        choices=[
            CompletionChoice(index=i, text=(v.output or {})["text"], finish_reason=(v.output or {})["finish_reason"])
            for i, v in enumerate(views)
        ],
        usage=usage_of(views),
        mlq={"job_ids": [str(v.id) for v in views]},
    )


@router.post("/moderations", response_model=ModerationAnswer, responses=openai_responses(404, 409, 413, 429, 500, 504))
async def create_moderation(
    body: ModerationRequest, state: StateDep, principal: SubmitterDep, idempotency_key: IdempotencyKey = None
) -> ModerationAnswer:
    """Moderate a text, each of a list of texts (a result each), or the text and image parts
    of one input (a job each, one result: flagged where any part is, each score its highest)."""
    kind = served_kind(state, body.model or "moderation", wanted="moderation")
    parts = isinstance(body.input, list) and bool(body.input) and isinstance(body.input[0], ModerationPart)
    if isinstance(body.input, str):
        items: list[dict[str, object]] = [{"text": body.input}]
    else:
        items = [moderation_item(part) for part in body.input]
    listed = None if isinstance(body.input, str) else "input"
    views = await run_all(state, with_read(principal), kind, items, idempotency_key, listed=listed, rename=MODERATION)
    sources = ["image" if "image" in item else "text" for item in items]
    outputs = [(source, view.output or {}) for source, view in zip(sources, views, strict=True)]
    results = [moderation_result(outputs)] if parts else [moderation_result([one]) for one in outputs]
    return ModerationAnswer(
        id=f"modr-{views[0].id}",
        model=state.models.kinds[kind].model,
        results=results,
        mlq={"job_ids": [str(v.id) for v in views]},
    )


def moderation_item(part: str | ModerationPart) -> dict[str, object]:
    """A moderation job's input from a text or a part (an image by URL or data: URL)."""
    if isinstance(part, str):
        return {"text": part}
    if part.type == "text" and part.text is not None:
        return {"text": part.text}
    if part.type == "image_url" and part.image_url is not None:
        url = part.image_url.url
        if url.startswith("data:"):
            header, _, data = url.partition(",")
            if not header.endswith(";base64"):
                raise InvalidField(("body", "input"), "a data: URL must be base64 (data:image/png;base64,...)")
            return {"image": {"base64": data}}
        return {"image": {"url": url}}
    raise InvalidField(("body", "input"), f"a {part.type} part needs its {part.type} field")


def moderation_result(outputs: list[tuple[str, dict[str, Any]]]) -> ModerationResult:
    """One result from the outputs of an input's parts: flagged where any part is."""
    flags: dict[str, bool] = {}
    scores: dict[str, float] = {}
    applied: dict[str, list[str]] = {}
    for source, output in outputs:
        for name, score in output.get("category_scores", {}).items():
            scores[name] = max(scores.get(name, 0.0), score)
            flags[name] = flags.get(name, False) or bool(output.get("categories", {}).get(name))
            applied.setdefault(name, [])
            if source not in applied[name]:
                applied[name].append(source)
    return ModerationResult(
        flagged=any(flags.values()), categories=flags, category_scores=scores, category_applied_input_types=applied
    )


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


def refuse_streaming(body: Sampling) -> None:
    if body.stream:
        raise InvalidField(("body", "stream"), "stream is not supported yet: send stream=false (the default)")


def text_of(content: str | list[ContentPart]) -> str:
    return content if isinstance(content, str) else "\n".join(part.text for part in content)


def generation_options(body: Sampling, *, max_tokens: int | None) -> dict[str, object]:
    """The generation kinds' options from OpenAI's: those the request set, by the kinds' names."""
    stop = [body.stop] if isinstance(body.stop, str) else body.stop
    given = {
        "max_new_tokens": max_tokens,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "stop": stop,
        "seed": body.seed,
    }
    return {name: value for name, value in given.items() if value is not None}


def usage_of(views: list[JobView]) -> CompletionUsage:
    prompt = sum(int((v.output or {}).get("prompt_tokens") or 0) for v in views)
    completion = sum(int((v.output or {}).get("completion_tokens") or 0) for v in views)
    return CompletionUsage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


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
) -> list[JobView]:
    """One job per input, committed together (the intake groups them), awaited together. A
    refused input is named as the request named it: a job field by its OpenAI name
    (``rename``: ``{"max_new_tokens": "max_tokens"}``), an item of the ``listed`` parameter by
    its index (``input[2]``). Nothing is stored then."""
    submissions: list[Submission] = []
    for index, item in enumerate(inputs):
        key = None if idempotency_key is None else f"{idempotency_key}#{index}"
        try:
            job = SubmitJob(kind=kind, input=item)
            submissions.append(await prepared(state, job, principal=principal, idempotency_key=key))
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
