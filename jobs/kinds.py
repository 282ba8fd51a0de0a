"""Job kinds: each one names its input and output schema.

The schemas are the contract between the API (which validates input before
anything is stored) and the workers (whose adapters promise the output). A new kind is
a new schema pair and one ``register`` call; the plumbing never changes. Their shared
pieces (bounded texts, files, limits) are in ``jobs.schemas``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from jobs.schemas import (
    HARD_MAX_ITEMS,
    HARD_MAX_TEXT_CHARS,
    BinaryInput,
    GenerationOptions,
    Input,
    Output,
    Schema,
    ShortText,
    Text,
    TextInput,
    Usage,
    at_most,
    check_max,
)

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
    tokens: int | None = Field(default=None, description="Tokens the model read (after truncation).")


# --- moderation ----------------------------------------------------------


class ModerationInput(Input):
    text: Text | None = None
    image: BinaryInput | None = None

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
    prompt: Text


class TextGenerationOutput(Usage):
    text: str
    finish_reason: Literal["stop", "length"]


class Text2TextInput(GenerationOptions):
    text: Text
    num_beams: int = Field(default=1, ge=1, le=8)


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
    prompt: Text
    negative_prompt: str | None = Field(default=None, max_length=HARD_MAX_TEXT_CHARS)
    num_inference_steps: Annotated[int, at_most("max_steps", 150)] = Field(default=20, ge=1)
    guidance_scale: float = Field(default=7.5, ge=0, le=50)
    width: int = Field(default=512, ge=16, multiple_of=8)
    height: int = Field(default=512, ge=16, multiple_of=8)
    num_images: Annotated[int, at_most("max_images", 8)] = Field(default=1, ge=1)
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)

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
    prompt: Text
    duration_s: Annotated[float, at_most("max_duration_s", 30)] = Field(default=5.0, gt=0)
    guidance_scale: float = Field(default=3.0, ge=0, le=20)
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)


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
