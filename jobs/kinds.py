"""Job kinds: each one names its input and output schema.

The schemas are the contract between the API (which validates input before
anything is stored) and the workers (whose adapters promise the output).
Limits that a deployment tunes (``max_text_chars``...) come from the models
file and reach validators through the pydantic validation context, so the
422 names the field and the limit. A new kind is a new schema pair and one
``register`` call; the plumbing never changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

HARD_MAX_TEXT_CHARS = 100_000  # above any models file: protects the API from huge bodies


class Schema(BaseModel):
    model_config = ConfigDict(extra="forbid")


def limit(info: ValidationInfo, name: str, default: int) -> int:
    """A limit from the models file (validation context), or the built-in default."""
    limits = (info.context or {}).get("limits") or {}
    return int(limits.get(name, default))


def check_text(value: str, info: ValidationInfo) -> str:
    max_chars = limit(info, "max_text_chars", HARD_MAX_TEXT_CHARS)
    if len(value) > max_chars:
        raise ValueError(f"text is {len(value)} characters; the limit for this kind is max_text_chars={max_chars}")
    if not value.strip():
        raise ValueError("text is empty")
    return value


class TextInput(Schema):
    text: str = Field(max_length=HARD_MAX_TEXT_CHARS, description="The text to process.")

    @field_validator("text")
    @classmethod
    def _text_within_limits(cls, value: str, info: ValidationInfo) -> str:
        return check_text(value, info)


# --- text-classification -------------------------------------------------


class TextClassificationInput(TextInput):
    top_k: int | None = Field(default=None, ge=1, le=1000, description="Return this many labels; all when unset.")


class LabelScore(Schema):
    label: str
    score: float


class TextClassificationOutput(Schema):
    label: str = Field(description="The most likely label.")
    score: float
    labels: list[LabelScore] = Field(description="Labels by descending score.")


# --- embedding -----------------------------------------------------------


class EmbeddingInput(TextInput):
    normalize: bool = Field(default=True, description="Scale the vector to unit length.")


class EmbeddingOutput(Schema):
    embedding: list[float]
    dimensions: int


# --- registry ------------------------------------------------------------


@dataclass(frozen=True)
class KindSpec:
    name: str
    input_model: type[Schema]
    output_model: type[Schema]
    description: str
    examples: tuple[dict[str, Any], ...] = ()  # demo jobs, also shown in the README

    def validate_input(self, data: Any, *, limits: dict[str, Any] | None = None) -> Schema:
        """Validate raw input; raises pydantic.ValidationError naming the field."""
        return self.input_model.model_validate(data, context={"limits": limits or {}})


KINDS: dict[str, KindSpec] = {}


def register(spec: KindSpec) -> KindSpec:
    if spec.name in KINDS:
        raise ValueError(f"job kind {spec.name!r} is registered twice")
    KINDS[spec.name] = spec
    return spec


def get_kind(name: str) -> KindSpec:
    try:
        return KINDS[name]
    except KeyError:
        known = ", ".join(sorted(KINDS))
        raise KeyError(f"unknown job kind {name!r}; known kinds: {known}") from None


register(
    KindSpec(
        name="text-classification",
        input_model=TextClassificationInput,
        output_model=TextClassificationOutput,
        description="Text to labels with scores (sequence classification).",
        examples=({"text": "这是一条新闻标题"}, {"text": "the team won the championship", "top_k": 2}),
    )
)
register(
    KindSpec(
        name="embedding",
        input_model=EmbeddingInput,
        output_model=EmbeddingOutput,
        description="Text to a mean-pooled sentence embedding.",
        examples=({"text": "我喜欢看电影和玩游戏"}, {"text": "a kitten sleeps on the sofa"}),
    )
)
