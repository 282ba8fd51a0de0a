"""What each of OpenAI's endpoints makes of a request, and of the jobs that ran it. Pure
functions, shared by the synchronous routes (producer/routes/openai_compat.py) and by the
Batch API (producer/openai_batches.py), so a batch line's ``body`` is what the route answers.

    request --jobs()--> Made(inputs, listed, options) --mlq runs a job per input-->
    [Done] --answer(options, model, done)--> the endpoint's answer
"""

from __future__ import annotations

import base64
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from jobs.errors import InvalidField
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
    ModerationAnswer,
    ModerationPart,
    ModerationRequest,
    ModerationResult,
    Sampling,
    Usage,
)


@dataclass(frozen=True)
class Made:
    """A request as mlq runs it: a job input each (``listed``: the request parameter whose
    items they are, named by index when one is refused) and what the answer needs besides."""

    inputs: list[dict[str, object]]
    listed: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Done:
    """A job that succeeded, as an answer reads it."""

    id: uuid.UUID
    created_at: datetime
    output: dict[str, Any]


@dataclass(frozen=True)
class Endpoint:
    path: str
    kind: str  # the kind a request's model must serve
    request: type[BaseModel]
    rename: dict[str, str]  # a job's fields by the request's names (the first: the one a failed job names)
    jobs: Callable[[Any], Made]
    answer: Callable[[dict[str, Any], str, list[Done]], BaseModel]

    def model_of(self, body: Any) -> str:
        return str(getattr(body, "model", None) or self.kind)


def text_of(content: str | list[ContentPart]) -> str:
    return content if isinstance(content, str) else "\n".join(part.text for part in content)


def refuse_streaming(body: Sampling) -> None:
    if body.stream:
        raise InvalidField(("body", "stream"), "stream is not supported yet: send stream=false (the default)")


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


def usage_of(done: list[Done]) -> CompletionUsage:
    prompt = sum(int(d.output.get("prompt_tokens") or 0) for d in done)
    completion = sum(int(d.output.get("completion_tokens") or 0) for d in done)
    return CompletionUsage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def job_ids(done: list[Done]) -> dict[str, Any]:
    return {"job_ids": [str(d.id) for d in done]}


# --- embeddings ---------------------------------------------------------------------------------


def embedding_jobs(body: EmbeddingsRequest) -> Made:
    if body.dimensions is not None:
        raise InvalidField(("body", "dimensions"), "dimensions is not supported: the size is the model's own")
    texts = [body.input] if isinstance(body.input, str) else body.input
    listed = None if isinstance(body.input, str) else "input"
    return Made([{"text": t} for t in texts], listed, {"encoding_format": body.encoding_format})


def embedding_answer(options: dict[str, Any], model: str, done: list[Done]) -> EmbeddingsAnswer:
    data = []
    for index, one in enumerate(done):
        values = one.output.get("embedding", [])
        if options.get("encoding_format") == "base64":  # little-endian float32, as the SDK decodes it
            values = base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
        data.append(Embedding(index=index, embedding=values))
    tokens = sum(int(d.output.get("tokens") or 0) for d in done)
    return EmbeddingsAnswer(
        data=data, model=model, usage=Usage(prompt_tokens=tokens, total_tokens=tokens), mlq=job_ids(done)
    )


# --- chat and completions -----------------------------------------------------------------------


def chat_jobs(body: ChatRequest) -> Made:
    refuse_streaming(body)
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": text_of(m.content)}
                for m in body.messages]  # fmt: skip
    options = generation_options(body, max_tokens=body.max_completion_tokens or body.max_tokens)
    return Made([{"messages": messages, **options}])


def chat_answer(options: dict[str, Any], model: str, done: list[Done]) -> ChatAnswer:
    [one] = done
    return ChatAnswer(
        id=f"chatcmpl-{one.id}",
        created=int(one.created_at.timestamp()),
        model=model,
        choices=[
            ChatChoice(
                index=0,
                message=AssistantMessage(content=one.output["message"]["content"]),
                finish_reason=one.output["finish_reason"],
            )
        ],
        usage=usage_of(done),
        mlq=job_ids(done),
    )


def completion_jobs(body: CompletionRequest) -> Made:
    refuse_streaming(body)
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    options = generation_options(body, max_tokens=body.max_tokens)
    return Made([{"prompt": p, **options} for p in prompts], None if isinstance(body.prompt, str) else "prompt")


def completion_answer(options: dict[str, Any], model: str, done: list[Done]) -> CompletionAnswer:
    return CompletionAnswer(
        id=f"cmpl-{done[0].id}",
        created=int(done[0].created_at.timestamp()),
        model=model,
        choices=[
            CompletionChoice(index=i, text=d.output["text"], finish_reason=d.output["finish_reason"])
            for i, d in enumerate(done)
        ],
        usage=usage_of(done),
        mlq=job_ids(done),
    )


# --- moderations --------------------------------------------------------------------------------


def moderation_jobs(body: ModerationRequest) -> Made:
    """A text, each of a list of texts (a result each), or the text and image parts of one
    input (a job each, one result: ``combined``)."""
    if isinstance(body.input, str):
        return Made([{"text": body.input}])
    combined = bool(body.input) and isinstance(body.input[0], ModerationPart)
    items = [moderation_item(part) for part in body.input]
    sources = ["image" if "image" in item else "text" for item in items]
    return Made(items, "input", {"combined": combined, "sources": sources})


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


def moderation_answer(options: dict[str, Any], model: str, done: list[Done]) -> ModerationAnswer:
    sources = options.get("sources") or ["text"] * len(done)
    outputs = [(source, d.output) for source, d in zip(sources, done, strict=True)]
    results = [moderation_result(outputs)] if options.get("combined") else [moderation_result([o]) for o in outputs]
    return ModerationAnswer(id=f"modr-{done[0].id}", model=model, results=results, mlq=job_ids(done))


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


EMBEDDINGS = Endpoint(
    "/v1/embeddings", "embedding", EmbeddingsRequest, {"text": "input"}, embedding_jobs, embedding_answer
)
CHAT = Endpoint(
    "/v1/chat/completions",
    "chat",
    ChatRequest,
    {"messages": "messages", "max_new_tokens": "max_completion_tokens"},
    chat_jobs,
    chat_answer,
)
COMPLETIONS = Endpoint(
    "/v1/completions",
    "text-generation",
    CompletionRequest,
    {"prompt": "prompt", "max_new_tokens": "max_tokens"},
    completion_jobs,
    completion_answer,
)
MODERATIONS = Endpoint(
    "/v1/moderations", "moderation", ModerationRequest, {"text": "input", "image": "input"}, moderation_jobs,
    moderation_answer,
)  # fmt: skip
BATCHABLE = {e.path: e for e in (CHAT, EMBEDDINGS, COMPLETIONS, MODERATIONS)}  # the Batch API's endpoints
