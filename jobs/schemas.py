"""The pieces every kind's schemas are made of: bases, bounded texts, files, limits.

Limits that a deployment tunes (``max_text_chars``...) come from the models file and reach
validators through the pydantic validation context, so the 422 names the field and the
limit. The kinds themselves (their input and output schemas) are in ``jobs.kinds``.
"""

from __future__ import annotations

from functools import cache
from typing import Annotated, Any, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    model_validator,
)

HARD_MAX_TEXT_CHARS = 100_000  # above any models file: protects the API from huge bodies
HARD_MAX_ITEM_CHARS = 4_000  # one short text in a list: an interest, a candidate item's text
HARD_MAX_ITEMS = 10_000  # candidates of one recommendation, above any models file's max_items
HARD_MAX_BASE64_CHARS = 40_000_000  # inline file, above any request limit (max_request_bytes: 32 MB)
MAX_STOP_CHARS = 200  # one stop string

ShortText = Annotated[str, Field(min_length=1, max_length=HARD_MAX_ITEM_CHARS)]

# Limits of binary inputs where the models file sets none: the API checks them at submission
# (from the file's header; no pixel or sample is decoded there), the worker again as it decodes.
DEFAULT_BINARY_LIMITS = {
    "max_input_bytes": 20_000_000,  # a large JPEG is a few MB; PNG screenshots stay well below this
    "max_image_pixels": 40_000_000,  # a 50-megapixel phone photo is ~48M; 40M is ~160 MB as RGB
    "max_audio_s": 600,  # ten minutes: 21 windows of 30 s, seconds of GPU time
}


def binary_limit(limits: dict[str, Any], name: str) -> int:
    """A binary input's limit from the models file's ``limits``, else the default above."""
    return int(limits.get(name, DEFAULT_BINARY_LIMITS[name]))


class Schema(BaseModel):
    # NaN and infinities are written as such, not as null: PostgreSQL refuses them, and the
    # job fails with result_not_storable instead of storing a result with holes in it
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")


class Output(Schema):
    """A kind's output: what the model made, and what to know about it."""

    warnings: list[str] = Field(
        default_factory=list, description="What to know about this result: e.g. the model does not read its language."
    )


class Input(Schema):
    """A kind's input. Numbers must be finite: NaN and Infinity are refused, naming the field.
    Every string and list has a bound (a test walks the schemas to hold us to it)."""

    model_config = ConfigDict(allow_inf_nan=False)


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


# A text a model reads: not blank, at most the kind's ``max_text_chars`` (models file).
Text = Annotated[str, Field(max_length=HARD_MAX_TEXT_CHARS), AfterValidator(check_text)]


class TextInput(Input):
    text: Text = Field(description="The text to process.")


def check_max(value: int | float, info: ValidationInfo, name: str, default: int) -> int | float:
    """Refuse ``value`` above the models file's limit ``name``, naming the limit."""
    ceiling = limit(info, name, default)
    if value > ceiling:
        raise ValueError(f"{value} is over the limit for this kind: {name}={ceiling}")
    return value


def at_most(name: str, default: int) -> AfterValidator:
    """A field's validator: at most the models file's limit ``name`` (else ``default``)."""

    def checked(value: Any, info: ValidationInfo) -> Any:
        return type(value)(check_max(value, info, name, default))

    return AfterValidator(checked)


class BinaryInput(Input):
    """Binary input (audio, an image): inline as base64, the name of an uploaded artifact, or
    a public http(s) URL that the API downloads at submission (SSRF-checked, size-bounded).

    The API moves inline or downloaded bytes to the artifact store before the job is stored, so
    PostgreSQL only ever holds ``{"artifact": name}``; the runner puts the bytes in
    ``data`` before the adapter sees the item.
    """

    base64: str | None = Field(
        default=None, max_length=HARD_MAX_BASE64_CHARS, description="The file's bytes, base64-encoded."
    )
    artifact: str | None = Field(default=None, max_length=255, description="Name of a file uploaded with the job.")
    url: str | None = Field(
        default=None,
        max_length=2048,
        description="A public http(s) URL, downloaded once at submission; private and loopback addresses are refused.",
    )
    _data: bytes | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _exactly_one(self) -> BinaryInput:
        if sum(v is not None for v in (self.base64, self.artifact, self.url)) != 1:
            raise ValueError("give exactly one of base64, artifact or url")
        return self

    @property
    def data(self) -> bytes:
        if self._data is None:
            raise RuntimeError("binary input was not resolved from the artifact store")
        return self._data

    def resolve(self, data: bytes) -> None:
        self._data = data


@cache
def binary_fields(model: type[Schema]) -> tuple[str, ...]:
    """The fields of an input schema that may hold a file (a ``BinaryInput``)."""

    def holds_file(annotation: Any) -> bool:
        if isinstance(annotation, type) and issubclass(annotation, BinaryInput):
            return True
        return any(holds_file(arg) for arg in get_args(annotation))

    return tuple(name for name, f in model.model_fields.items() if holds_file(f.annotation))


def binaries(item: Schema) -> list[tuple[str, BinaryInput]]:
    """An input's file fields that hold something, with their names."""
    found = ((name, getattr(item, name)) for name in binary_fields(type(item)))
    return [(name, value) for name, value in found if isinstance(value, BinaryInput)]


class GenerationOptions(Input):
    """Decoding options shared by the text generation kinds."""

    max_new_tokens: Annotated[int, at_most("max_new_tokens", 4096)] = Field(
        default=64, ge=1, description="Tokens to generate at most."
    )
    temperature: float = Field(default=1.0, ge=0, le=5, description="0 means greedy decoding.")
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=1, le=1000)
    repetition_penalty: float = Field(default=1.0, gt=0, le=10)
    stop: list[Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]] = Field(
        default_factory=list, max_length=8, description="Stop at any of these strings."
    )
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1, description="Same seed, same text (on one device).")


class Usage(Output):
    prompt_tokens: int
    completion_tokens: int
