"""OpenAI's request and answer shapes, as its SDK sends and reads them, with mlq's own fields
added where a path is shared (a model's kind, limits and schemas)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from jobs.schemas import HARD_MAX_TEXT_CHARS
from producer.schemas import ModelView

MAX_EMBEDDING_INPUTS = 2048  # texts in one /v1/embeddings request, as OpenAI allows
Text = Annotated[str, Field(max_length=HARD_MAX_TEXT_CHARS)]  # the kind's own limit is checked per job


class ModelEntry(ModelView):
    """A served model as OpenAI lists one, with mlq's fields. Its id is the kind's name; the
    served model's name is an alias of it."""

    id: str = Field(description="The kind's name, e.g. embedding; the served model's name is an alias.")
    object: Literal["model"] = "model"
    created: int = Field(description="When this API loaded its models file (Unix seconds).")
    owned_by: str = "mlq"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelEntry]


class EmbeddingsRequest(BaseModel):
    """``POST /v1/embeddings``: each text of ``input`` is a job of kind ``embedding``."""

    model_config = ConfigDict(extra="forbid")

    input: Text | Annotated[list[Text], Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS)] = Field(
        description="A text, or a list of texts (each a job); token arrays are not accepted."
    )
    model: str = Field(max_length=256, description="embedding, or the served model's name.")
    encoding_format: Literal["float", "base64"] = Field(
        default="float", description="base64: little-endian float32, as OpenAI's SDK decodes it."
    )
    dimensions: int | None = Field(default=None, ge=1, le=65536, description="Not supported: the size is the model's.")
    user: str | None = Field(default=None, max_length=256, description="Accepted and ignored.")


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsAnswer(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage
    mlq: dict[str, Any] = Field(default_factory=dict, description="mlq's own: the ids of the jobs that ran.")


# --- chat and completions --------------------------------------------------------------------

MAX_MESSAGES = 256  # as the chat kind takes
MAX_PROMPTS = 64  # prompts in one /v1/completions request, each a job


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"] = Field(description="Only text parts are read.")
    text: Text


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant"] = Field(description="developer is read as system.")
    content: Text | Annotated[list[ContentPart], Field(max_length=64)]
    name: str | None = Field(default=None, max_length=64, description="Accepted and ignored.")


class Sampling(BaseModel):
    """What OpenAI's text routes share, as the generation kinds take it."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(max_length=256, description="The kind (chat, text-generation) or the served model's name.")
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: (
        Annotated[str, Field(max_length=200)]
        | Annotated[list[Annotated[str, Field(max_length=200)]], Field(max_length=4)]
        | None
    ) = None
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)
    n: int = Field(default=1, ge=1, le=1, description="One choice per request.")
    stream: bool = Field(default=False, description="Not yet: true is refused.")
    user: str | None = Field(default=None, max_length=256, description="Accepted and ignored.")


class ChatRequest(Sampling):
    messages: list[ChatMessageIn] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(default=None, ge=1, description="Deprecated by OpenAI for max_completion_tokens.")
    max_completion_tokens: int | None = Field(default=None, ge=1)


class CompletionRequest(Sampling):
    prompt: Text | Annotated[list[Text], Field(min_length=1, max_length=MAX_PROMPTS)]
    max_tokens: int | None = Field(default=16, ge=1)


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class ChatChoice(Choice):
    message: AssistantMessage


class CompletionChoice(Choice):
    text: str


class Generated(BaseModel):
    """What OpenAI's chat and completion answers share."""

    id: str
    created: int
    model: str
    usage: CompletionUsage
    mlq: dict[str, Any] = Field(default_factory=dict, description="mlq's own: the ids of the jobs that ran.")


class ChatAnswer(Generated):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]


class CompletionAnswer(Generated):
    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]


# --- moderations -------------------------------------------------------------------------------

MAX_MODERATION_INPUTS = 64


class ImageUrl(BaseModel):
    url: str = Field(max_length=HARD_MAX_TEXT_CHARS * 400, description="http(s), or a data: URL with base64.")


class ModerationPart(BaseModel):
    """One part of a multimodal input: its parts are moderated as one (a job each, one result)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "image_url"]
    text: Text | None = None
    image_url: ImageUrl | None = None


class ModerationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: (
        Text
        | Annotated[list[Text], Field(min_length=1, max_length=MAX_MODERATION_INPUTS)]
        | Annotated[list[ModerationPart], Field(min_length=1, max_length=MAX_MODERATION_INPUTS)]
    ) = Field(description="A text, a list of texts (a result each), or the parts of one input (one result).")
    model: str | None = Field(default=None, max_length=256, description="moderation, or the served model's name.")


class ModerationResult(BaseModel):
    flagged: bool
    categories: dict[str, bool]
    category_scores: dict[str, float]
    category_applied_input_types: dict[str, list[str]]


class ModerationAnswer(BaseModel):
    id: str
    model: str
    results: list[ModerationResult]
    mlq: dict[str, Any] = Field(default_factory=dict, description="mlq's own: the ids of the jobs that ran.")


# --- images ------------------------------------------------------------------------------------


class ImagesRequest(BaseModel):
    """``POST /v1/images/generations``: one ``image-generation`` job making ``n`` images."""

    model_config = ConfigDict(extra="forbid")

    prompt: Text
    model: str | None = Field(default=None, max_length=256, description="image-generation, or the served model's name.")
    n: int = Field(default=1, ge=1, le=10)
    size: str | None = Field(
        default=None, pattern=r"^[0-9]{2,4}x[0-9]{2,4}$", description="WIDTHxHEIGHT, e.g. 256x256."
    )
    response_format: Literal["url", "b64_json"] = Field(
        default="url", description="url: the job's artifact, fetched with the same key."
    )
    user: str | None = Field(default=None, max_length=256, description="Accepted and ignored.")


class ImageData(BaseModel):
    b64_json: str | None = None
    url: str | None = None


class ImagesAnswer(BaseModel):
    created: int
    data: list[ImageData]
    mlq: dict[str, Any] = Field(default_factory=dict, description="mlq's own: the ids of the jobs that ran.")


# --- files and the Batch API -------------------------------------------------------------------

BatchEndpoint = Literal["/v1/chat/completions", "/v1/embeddings", "/v1/completions", "/v1/moderations"]


class OpenAIBatchRequest(BaseModel):
    """``POST /v1/batches`` as OpenAI's SDK sends it: the lines are an uploaded file's."""

    model_config = ConfigDict(extra="forbid")

    input_file_id: uuid.UUID = Field(description="A file uploaded with purpose=batch.")
    endpoint: BatchEndpoint = Field(description="What every line calls; its url must be this.")
    completion_window: Literal["24h"] = Field(description="Accepted as OpenAI takes it; runs here do not expire.")
    metadata: (
        Annotated[
            dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]], Field(max_length=16)
        ]
        | None
    ) = None


class FileObject(BaseModel):
    id: uuid.UUID
    object: Literal["file"] = "file"
    bytes: int
    created_at: int = Field(description="Unix seconds.")
    filename: str
    purpose: str = Field(description="batch (uploaded), batch_output (a run's output or error file)")
    status: Literal["processed"] = "processed"
    expires_at: None = None
    status_details: None = None


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    first_id: uuid.UUID | None
    last_id: uuid.UUID | None
    has_more: bool


class FileDeleted(BaseModel):
    id: uuid.UUID
    object: Literal["file"] = "file"
    deleted: Literal[True] = True
