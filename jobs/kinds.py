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
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator, model_validator

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


class TextInput(Input):
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


class TextClassificationOutput(Output):
    label: str = Field(description="The most likely label.")
    score: float
    labels: list[LabelScore] = Field(description="Labels by descending score.")


# --- embedding -----------------------------------------------------------


class EmbeddingInput(TextInput):
    normalize: bool = Field(default=True, description="Scale the vector to unit length.")


class EmbeddingOutput(Output):
    embedding: list[float]
    dimensions: int


# --- shared pieces -------------------------------------------------------


def check_max(value: int | float, info: ValidationInfo, name: str, default: int) -> int | float:
    """Refuse ``value`` above the models file's limit ``name``, naming the limit."""
    ceiling = limit(info, name, default)
    if value > ceiling:
        raise ValueError(f"{value} is over the limit for this kind: {name}={ceiling}")
    return value


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


class GenerationOptions(Input):
    """Decoding options shared by the text generation kinds."""

    max_new_tokens: int = Field(default=64, ge=1, description="Tokens to generate at most.")
    temperature: float = Field(default=1.0, ge=0, le=5, description="0 means greedy decoding.")
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=1, le=1000)
    repetition_penalty: float = Field(default=1.0, gt=0, le=10)
    stop: list[Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]] = Field(
        default_factory=list, max_length=8, description="Stop at any of these strings."
    )
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1, description="Same seed, same text (on one device).")

    @field_validator("max_new_tokens")
    @classmethod
    def _within_token_limit(cls, value: int, info: ValidationInfo) -> int:
        return int(check_max(value, info, "max_new_tokens", 4096))


class Usage(Output):
    prompt_tokens: int
    completion_tokens: int


# --- moderation ----------------------------------------------------------


class ModerationInput(Input):
    text: str | None = Field(default=None, max_length=HARD_MAX_TEXT_CHARS)
    image: BinaryInput | None = None

    @field_validator("text")
    @classmethod
    def _text_within_limits(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else check_text(value, info)

    @model_validator(mode="after")
    def _one_subject(self) -> ModerationInput:
        if (self.text is None) == (self.image is None):
            raise ValueError("give exactly one of text or image")
        return self


class ModerationOutput(Output):
    flagged: bool
    flagged_categories: list[str]
    categories: dict[str, bool]
    category_scores: dict[str, float]


# --- text generation -----------------------------------------------------


class TextGenerationInput(GenerationOptions):
    prompt: str = Field(max_length=HARD_MAX_TEXT_CHARS)

    @field_validator("prompt")
    @classmethod
    def _prompt_within_limits(cls, value: str, info: ValidationInfo) -> str:
        return check_text(value, info)


class TextGenerationOutput(Usage):
    text: str
    finish_reason: Literal["stop", "length"]


class Text2TextInput(GenerationOptions):
    text: str = Field(max_length=HARD_MAX_TEXT_CHARS)
    num_beams: int = Field(default=1, ge=1, le=8)

    @field_validator("text")
    @classmethod
    def _text_within_limits(cls, value: str, info: ValidationInfo) -> str:
        return check_text(value, info)


class Text2TextOutput(Usage):
    text: str


class ChatMessage(Input):
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=HARD_MAX_TEXT_CHARS)


class ChatInput(GenerationOptions):
    messages: list[ChatMessage] = Field(min_length=1, max_length=256)

    @field_validator("messages")
    @classmethod
    def _conversation_within_limits(cls, value: list[ChatMessage], info: ValidationInfo) -> list[ChatMessage]:
        total = sum(len(m.content) for m in value)
        check_max(total, info, "max_text_chars", HARD_MAX_TEXT_CHARS)
        if value[-1].role != "user":
            raise ValueError("the last message must be the user's")
        return value


class ChatOutput(Usage):
    message: ChatMessage
    finish_reason: Literal["stop", "length"]


# --- audio and vision ----------------------------------------------------


class SpeechRecognitionInput(Input):
    audio: BinaryInput = Field(description="WAV, FLAC, OGG or MP3.")
    language: str | None = Field(default=None, max_length=32, description="e.g. zh, en (Whisper models).")
    task: Literal["transcribe", "translate"] = "transcribe"


class SpeechRecognitionOutput(Output):
    text: str
    duration_s: float
    sampling_rate: int
    chunks: int = Field(description="How many windows long audio was cut into.")


class ImageClassificationInput(Input):
    image: BinaryInput = Field(description="PNG, JPEG, WEBP or GIF.")
    top_k: int = Field(default=5, ge=1, le=1000)


class ImageClassificationOutput(TextClassificationOutput):
    pass


class ImageGenerationInput(Input):
    prompt: str = Field(max_length=HARD_MAX_TEXT_CHARS)
    negative_prompt: str | None = Field(default=None, max_length=HARD_MAX_TEXT_CHARS)
    num_inference_steps: int = Field(default=20, ge=1)
    guidance_scale: float = Field(default=7.5, ge=0, le=50)
    width: int = Field(default=512, ge=16, multiple_of=8)
    height: int = Field(default=512, ge=16, multiple_of=8)
    num_images: int = Field(default=1, ge=1)
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)

    @field_validator("prompt")
    @classmethod
    def _prompt_within_limits(cls, value: str, info: ValidationInfo) -> str:
        return check_text(value, info)

    @field_validator("num_inference_steps")
    @classmethod
    def _steps(cls, value: int, info: ValidationInfo) -> int:
        return int(check_max(value, info, "max_steps", 150))

    @field_validator("num_images")
    @classmethod
    def _images(cls, value: int, info: ValidationInfo) -> int:
        return int(check_max(value, info, "max_images", 8))

    @model_validator(mode="after")
    def _pixels(self, info: ValidationInfo) -> ImageGenerationInput:
        check_max(self.width * self.height, info, "max_image_pixels", 1024 * 1024)
        return self


class ArtifactRef(Schema):
    artifact: str = Field(description="Name under GET /v1/jobs/{id}/artifacts/{name}.")
    content_type: str


class GeneratedImage(ArtifactRef):
    width: int
    height: int


class ImageGenerationOutput(Output):
    images: list[GeneratedImage]
    seed: int


class MusicGenerationInput(Input):
    prompt: str = Field(max_length=HARD_MAX_TEXT_CHARS)
    duration_s: float = Field(default=5.0, gt=0)
    guidance_scale: float = Field(default=3.0, ge=0, le=20)
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)

    @field_validator("prompt")
    @classmethod
    def _prompt_within_limits(cls, value: str, info: ValidationInfo) -> str:
        return check_text(value, info)

    @field_validator("duration_s")
    @classmethod
    def _duration(cls, value: float, info: ValidationInfo) -> float:
        return float(check_max(value, info, "max_duration_s", 30))


class GeneratedAudio(ArtifactRef):
    duration_s: float
    sampling_rate: int


class MusicGenerationOutput(Output):
    audio: GeneratedAudio
    seed: int


# --- recommendation ------------------------------------------------------


class UserProfile(Input):
    interests: list[ShortText] = Field(default_factory=list, max_length=100, description="Stated interests.")
    recent: list[ShortText] = Field(default_factory=list, max_length=100, description="Recent behaviour, as text.")

    @model_validator(mode="after")
    def _something_to_go_on(self) -> UserProfile:
        if not (self.interests or self.recent):
            raise ValueError("give at least one interest or recent item")
        return self


class CandidateItem(Input):
    id: str = Field(min_length=1, max_length=200)
    text: ShortText


class RecommendationInput(Input):
    user: UserProfile
    items: list[CandidateItem] = Field(min_length=1, max_length=HARD_MAX_ITEMS)
    top_k: int = Field(default=10, ge=1, le=1000)

    @field_validator("items")
    @classmethod
    def _items(cls, value: list[CandidateItem], info: ValidationInfo) -> list[CandidateItem]:
        check_max(len(value), info, "max_items", 1000)
        if len({item.id for item in value}) != len(value):
            raise ValueError("item ids must be unique")
        return value


class ScoredItem(Schema):
    id: str
    score: float


class RecommendationOutput(Output):
    items: list[ScoredItem] = Field(description="By descending relevance, at most top_k.")


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

register(
    KindSpec(
        name="moderation",
        input_model=ModerationInput,
        output_model=ModerationOutput,
        description="Text (or an image) to flagged plus per-category scores against the models file's thresholds.",
        examples=({"text": "我想听一首欢快的流行歌曲"}, {"text": "I will hurt you if you come here again"}),
    )
)
register(
    KindSpec(
        name="text-generation",
        input_model=TextGenerationInput,
        output_model=TextGenerationOutput,
        description="A causal language model continues the prompt (generate).",
        examples=({"prompt": "写一篇关于春天的短文：", "max_new_tokens": 32, "seed": 7},),
    )
)
register(
    KindSpec(
        name="text2text-generation",
        input_model=Text2TextInput,
        output_model=Text2TextOutput,
        description="An encoder-decoder model (T5 family) rewrites the text (generate).",
        examples=({"text": "summarize: 这是一条新闻标题", "max_new_tokens": 24},),
    )
)
register(
    KindSpec(
        name="chat",
        input_model=ChatInput,
        output_model=ChatOutput,
        description="Messages rendered with the model's chat template to the assistant's reply.",
        examples=({"messages": [{"role": "user", "content": "请问我的订单什么时候发货？"}], "max_new_tokens": 32},),
    )
)
register(
    KindSpec(
        name="speech-recognition",
        input_model=SpeechRecognitionInput,
        output_model=SpeechRecognitionOutput,
        description="Audio (WAV, FLAC, OGG, MP3) to text; long audio is chunked.",
    )
)
register(
    KindSpec(
        name="image-classification",
        input_model=ImageClassificationInput,
        output_model=ImageClassificationOutput,
        description="An image to top-k labels with scores.",
    )
)
register(
    KindSpec(
        name="image-generation",
        input_model=ImageGenerationInput,
        output_model=ImageGenerationOutput,
        description="A prompt to PNG images (diffusers text-to-image).",
        examples=({"prompt": "一只穿着蓝色衣服的狗", "num_inference_steps": 2, "width": 64, "height": 64, "seed": 1},),
    )
)
register(
    KindSpec(
        name="music-generation",
        input_model=MusicGenerationInput,
        output_model=MusicGenerationOutput,
        description="A prompt to a WAV clip (MusicGen).",
        examples=({"prompt": "我想听一首欢快的流行歌曲", "duration_s": 1.0, "seed": 3},),
    )
)
register(
    KindSpec(
        name="recommendation",
        input_model=RecommendationInput,
        output_model=RecommendationOutput,
        description="A user profile and candidate items to items ranked by relevance (embedding similarity).",
        examples=(
            {
                "user": {"interests": ["我喜欢看电影和玩游戏"], "recent": ["watched a science fiction film"]},
                "items": [
                    {"id": "film-1", "text": "a new science fiction movie opens in cinemas this week"},
                    {"id": "stock-1", "text": "the stock market closed lower on interest rate fears"},
                    {"id": "recipe-1", "text": "how to bake sourdough bread at home"},
                ],
                "top_k": 2,
            },
        ),
    )
)
