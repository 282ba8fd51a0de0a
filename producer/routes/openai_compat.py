"""The routes OpenAI's SDK calls, over mlq's jobs: each request is one job per input,
submitted and awaited, stored and visible under /v1/jobs like any other, batched by the
worker with everything else of its kind. Refusals take OpenAI's shape (producer/errors.py).

    POST /v1/embeddings    a text or a list of texts -> kind ``embedding``
"""

from __future__ import annotations

import asyncio
import base64
import struct
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, status

from jobs.errors import InvalidField, InvalidInput
from jobs.keys import Principal
from jobs.status import JobStatus
from producer.deps import State, StateDep, SubmitterDep
from producer.errors import openai_responses
from producer.intake import Submission
from producer.openai_schemas import Embedding, EmbeddingsAnswer, EmbeddingsRequest, Usage
from producer.routes.jobs import accepted_and_awaited
from producer.routes.models import kind_named
from producer.schemas import JobView, SubmitJob
from producer.submit import prepared

router = APIRouter(prefix="/v1", tags=["openai"])

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
    views = await run_all(state, with_read(principal), kind, [{"text": t} for t in texts], idempotency_key,
                          single=isinstance(body.input, str))  # fmt: skip
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
    single: bool,
) -> list[JobView]:
    """One job per input, committed together (the intake groups them), awaited together; a
    refused input is named by its index (``input[2]``) and nothing is stored."""
    submissions: list[Submission] = []
    for index, item in enumerate(inputs):
        where = ("body", "input") if single else ("body", "input", index)
        key = None if idempotency_key is None else f"{idempotency_key}#{index}"
        try:
            job = SubmitJob(kind=kind, input=item)
            submissions.append(await prepared(state, job, principal=principal, idempotency_key=key))
        except InvalidField as exc:
            raise InvalidField(where, str(exc)) from None
    wait_s = state.settings.max_wait_s
    done = await asyncio.gather(*(accepted_and_awaited(state, s, wait_s=wait_s) for s in submissions))
    views = [view for view, _ in done]
    for index, view in enumerate(views):
        where = ("body", "input") if single else ("body", "input", index)
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
