"""OpenAI's speech-to-text over mlq's jobs: ``POST /v1/audio/transcriptions`` takes a multipart
form (the audio as ``file``, the options as fields) and runs one ``speech-recognition`` job,
stored and visible under /v1/jobs like any other, answered when it is done as ``json``,
``text`` or ``verbose_json``. Refusals take OpenAI's shape (producer/errors.py).

What OpenAI's form may ask and the kind cannot do is refused, naming the field (a 400), never
silently ignored, so a caller does not believe a hint was followed:

- ``prompt``: the kind has nothing to condition decoding on; an empty prompt is no prompt.
- ``temperature``: the models decode greedily; 0 (OpenAI's default) is that, any other is refused.
- ``srt``, ``vtt``, ``diarized_json``: the kind's output has no timestamps and no speakers.
- ``stream=true``: the answer comes whole; ``stream=false`` is the default.
- any other field (``timestamp_granularities[]``, ``include[]``, ...): unknown, refused by name.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile

from jobs.errors import InvalidField
from producer.deps import StateDep, SubmitterDep
from producer.errors import openai_responses
from producer.routes.openai_compat import IdempotencyKey, run_all, served_kind, with_read
from producer.schemas import JobView

router = APIRouter(prefix="/v1", tags=["openai"])

OPTIONS = ("model", "language", "prompt", "response_format", "temperature", "stream")  # the text fields read
FORMATS = ("json", "text", "verbose_json")
MAX_FIELDS = 16  # OpenAI's form has 14 fields: room to read, and name, one this route does not take
MAX_MODEL_CHARS = 256  # as the other OpenAI routes bound their model
MAX_FILES = 2  # the audio, and room to name a file sent where a text field belongs
JOB_IDS = "Mlq-Job-Ids"  # names the answer's job: the text format has no field to carry it
# a job's fields by the names the form gives them (the first: the one a failed job names)
TRANSCRIPTION = {"audio": "file", "language": "language"}


class DurationUsage(BaseModel):
    type: Literal["duration"] = "duration"
    seconds: float = Field(description="The audio's duration.")


class TranscriptionAnswer(BaseModel):
    """``response_format=json`` (the default): the text."""

    text: str
    usage: DurationUsage
    mlq: dict[str, Any] = Field(default_factory=dict, description="mlq's own: the ids of the jobs that ran.")


class VerboseTranscriptionAnswer(TranscriptionAnswer):
    """``response_format=verbose_json``: the text, its duration and the language asked for."""

    task: Literal["transcribe"] = "transcribe"
    language: str | None = Field(description="The language the request gave; null when it gave none.")
    duration: float = Field(description="The audio's duration in seconds.")
    segments: list[dict[str, Any]] = Field(
        default_factory=list, description="Always empty: the kind's output has no timestamps."
    )


FORM_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "WAV, FLAC, OGG or MP3."},
                        "model": {
                            "type": "string",
                            "maxLength": MAX_MODEL_CHARS,
                            "description": "speech-recognition, or its served model's name.",
                            "examples": ["speech-recognition"],
                        },
                        "language": {"type": "string", "maxLength": 32, "description": "e.g. en, zh."},
                        "prompt": {"type": "string", "maxLength": 0, "description": "Not supported: empty or absent."},
                        "response_format": {"type": "string", "enum": list(FORMATS), "default": "json"},
                        "temperature": {"type": "number", "enum": [0], "description": "Greedy decoding only."},
                        "stream": {"type": "boolean", "enum": [False], "description": "The answer comes whole."},
                    },
                    "required": ["file", "model"],
                    "additionalProperties": False,  # a field not listed is refused by name (400)
                }
            }
        },
    }
}
ANSWER_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The transcription, in the response_format asked for.",
        "model": TranscriptionAnswer | VerboseTranscriptionAnswer,
        "content": {"text/plain": {"schema": {"type": "string", "description": "response_format=text"}}},
        "headers": {JOB_IDS: {"description": "The id of the job that ran.", "schema": {"type": "string"}}},
    }
}


@router.post(
    "/audio/transcriptions",
    response_model=None,
    openapi_extra=FORM_DOC,
    responses=ANSWER_DOC | openai_responses(404, 409, 413, 415, 429, 500, 504),
)
async def create_transcription(
    request: Request, state: StateDep, principal: SubmitterDep, idempotency_key: IdempotencyKey = None
) -> Response:
    """Transcribe an audio file: one ``speech-recognition`` job, answered when it is done."""
    audio, fields = await read_form(request)
    kind = served_kind(state, fields["model"], wanted="speech-recognition")
    language, response_format = options_of(fields)
    item: dict[str, object] = {"audio": {"artifact": "audio"}, "task": "transcribe"}
    if language is not None:
        item["language"] = language
    [view] = await run_all(
        state, with_read(principal), kind, [item], idempotency_key,
        listed=None, rename=TRANSCRIPTION, uploads={"audio": audio},
    )  # fmt: skip
    return answer(view, response_format=response_format, language=language)


async def read_form(request: Request) -> tuple[tuple[bytes, str], dict[str, str]]:
    """The audio (bytes and content type) and the text fields; a 400 naming a field that is
    missing, unknown, given twice, or a file where text belongs (or text where the file does)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "multipart/form-data":
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, "send multipart/form-data: the audio as a file part named file"
        )
    audio: tuple[bytes, str] | None = None
    fields: dict[str, str] = {}
    async with request.form(max_files=MAX_FILES, max_fields=MAX_FIELDS) as form:
        for name, value in form.multi_items():
            if name in fields or (name == "file" and audio is not None):
                raise InvalidField(("body", name), f"{name} is given more than once")
            if name != "file":
                fields[name] = text_field(name, value)
            elif isinstance(value, UploadFile):
                audio = (await value.read(), value.content_type or "application/octet-stream")
            else:
                raise InvalidField(("body", "file"), "file must be a file part (the audio), not a text field")
    if audio is None:
        raise InvalidField(("body", "file"), "file is required: the audio as a file part named file")
    if "model" not in fields:
        raise InvalidField(("body", "model"), "model is required: speech-recognition, or its served model's name")
    if len(fields["model"]) > MAX_MODEL_CHARS:
        raise InvalidField(("body", "model"), f"model is over {MAX_MODEL_CHARS} characters")
    return audio, fields


def text_field(name: str, value: str | UploadFile) -> str:
    if name not in OPTIONS:
        raise InvalidField(("body", name), f"unknown field {name!r}; this route reads file, {', '.join(OPTIONS)}")
    if isinstance(value, UploadFile):
        raise InvalidField(("body", name), f"{name} must be a text field, not a file")
    return value


def options_of(fields: dict[str, str]) -> tuple[str | None, str]:
    """The language (None: the model's own) and the response format; a 400 naming an option
    the kind cannot honour (see the module's docstring for why each is refused)."""
    response_format = fields.get("response_format") or "json"
    if response_format not in FORMATS:
        raise InvalidField(
            ("body", "response_format"),
            f"response_format {response_format!r} is not supported: json, text or verbose_json "
            "(the kind's output has no timestamps for srt or vtt, no speakers for diarized_json)",
        )
    if fields.get("prompt"):
        raise InvalidField(("body", "prompt"), "prompt is not supported: the model takes no prompt; leave it out")
    if not is_zero(fields.get("temperature") or "0"):
        raise InvalidField(("body", "temperature"), "temperature is not supported: the model decodes greedily; send 0")
    if fields.get("stream", "false").lower() != "false":
        raise InvalidField(("body", "stream"), "stream is not supported yet: send stream=false (the default)")
    return fields.get("language") or None, response_format


def is_zero(text: str) -> bool:
    try:
        return float(text) == 0
    except ValueError:
        return False


def answer(view: JobView, *, response_format: str, language: str | None) -> Response:
    """The finished job as the response format shows it; its id in the ``Mlq-Job-Ids`` header."""
    output = view.output or {}
    headers = {JOB_IDS: str(view.id)}
    if response_format == "text":
        return PlainTextResponse(output["text"], headers=headers)
    usage = DurationUsage(seconds=output["duration_s"])
    mlq = {"job_ids": [str(view.id)]}
    body: TranscriptionAnswer = (
        VerboseTranscriptionAnswer(
            text=output["text"], usage=usage, language=language, duration=output["duration_s"], mlq=mlq
        )
        if response_format == "verbose_json"
        else TranscriptionAnswer(text=output["text"], usage=usage, mlq=mlq)
    )
    return JSONResponse(body.model_dump(mode="json"), headers=headers)
