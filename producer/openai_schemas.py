"""OpenAI's request and answer shapes, as its SDK sends and reads them, with mlq's own fields
added where a path is shared (a model's kind, limits and schemas)."""

from __future__ import annotations

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
