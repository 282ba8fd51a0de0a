"""Binary inputs (audio, images) leave the request before the job is stored.

Inline base64 is bounded before it is decoded; uploaded files are bounded by
the request limit and the kind's ``max_input_bytes``; a URL is downloaded by
``producer.netfetch`` (public addresses only, redirects re-checked, the same byte
limit enforced while reading). The bytes go to the
artifact store and the job's input keeps only ``{"artifact": "input-<field>"}``,
so PostgreSQL never holds blobs.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import warnings
from dataclasses import dataclass
from typing import Any

from jobs.errors import InvalidField
from jobs.schemas import Schema, binaries, binary_limit


@dataclass(frozen=True)
class PendingFile:
    name: str  # artifact name: input-<field>
    data: bytes
    content_type: str


def input_error(loc: tuple[Any, ...], msg: str) -> InvalidField:
    return InvalidField(("body", "input", *loc), msg)


def unstorable(value: Any) -> tuple[tuple[Any, ...], str] | None:
    """Where in a JSON value sits something PostgreSQL cannot store, and why, or None.

    A NUL character (text and jsonb hold none), a lone surrogate (half of a UTF-16 pair, as
    ``"\\ud800"`` reads: not Unicode, so not UTF-8 either), a number that is not finite (NaN,
    Infinity, or beyond 1.8e308, as ``1e400`` reads). Such a job is refused, naming the place,
    before anything is stored."""
    if isinstance(value, str):
        return None if (reason := _bad_text(value)) is None else ((), reason)
    if isinstance(value, float):
        return None if math.isfinite(value) else ((), "is not a finite number (NaN or Infinity); send a finite one")
    if isinstance(value, dict):
        for key, item in value.items():
            if (reason := _bad_text(key)) is not None:
                return (key,), f"key {reason}"
            if (found := unstorable(item)) is not None:
                return (key, *found[0]), found[1]
    if isinstance(value, list):
        for index, item in enumerate(value):
            if (found := unstorable(item)) is not None:
                return (index, *found[0]), found[1]
    return None


def _bad_text(text: str) -> str | None:
    if "\x00" in text:
        return "contains a NUL character (\\u0000), which cannot be stored; remove it"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return "contains a lone surrogate (\\ud800-\\udfff without its pair), which is not Unicode; send UTF-8 text"
    return None


def stage_binaries(
    parsed: Schema,
    *,
    uploads: dict[str, tuple[bytes, str]],
    fetched: dict[str, tuple[bytes, str]],
    limits: dict[str, int],
) -> tuple[dict[str, Any], list[PendingFile]]:
    """The job's stored input and the files to store for it.

    ``uploads`` maps an uploaded file's name to (bytes, content type), from a multipart
    request; ``fetched`` maps an input field given by URL to what was downloaded for it.
    """
    max_bytes = binary_limit(limits, "max_input_bytes")
    stored = parsed.model_dump(mode="json")
    files: list[PendingFile] = []
    for field, value in binaries(parsed):
        name = f"input-{field}"
        if value.base64 is not None:
            data = decode_base64(value.base64, loc=(field, "base64"), max_bytes=max_bytes)
            content_type = "application/octet-stream"
        elif value.url is not None:
            data, content_type = fetched[field]
        elif value.artifact in uploads:
            data, content_type = uploads[value.artifact]
        else:
            raise input_error(
                (field, "artifact"),
                f"no file named {value.artifact!r} was uploaded with this job; send it as a multipart "
                "file part to POST /v1/jobs/upload, or inline as base64",
            )
        if len(data) > max_bytes:
            raise input_error((field,), f"file is {len(data)} bytes; the limit is max_input_bytes={max_bytes}")
        if not data:
            raise input_error((field,), "file is empty")
        HEADER_CHECKS.get(field, lambda *_: None)(data, (field,), limits)
        files.append(PendingFile(name=name, data=data, content_type=content_type))
        stored[field] = {"artifact": name}
    return stored, files


def decode_base64(text: str, *, loc: tuple[Any, ...], max_bytes: int) -> bytes:
    if len(text) > 4 * (max_bytes // 3 + 1):  # bounded before decoding
        raise input_error(loc, f"decodes to more than max_input_bytes={max_bytes}")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise input_error(loc, "not valid base64") from None


def check_audio_header(data: bytes, loc: tuple[Any, ...], limits: dict[str, int]) -> None:
    """Refuse audio longer than ``max_audio_s`` from its header alone, before anything is stored.
    A file whose header cannot be read is left to the worker, which fails that job saying why."""
    import soundfile

    limit_s = binary_limit(limits, "max_audio_s")
    try:
        info = soundfile.info(io.BytesIO(data))
    except Exception:  # undecodable: the worker fails the job with the decoder's reason
        return
    duration_s = info.frames / info.samplerate if info.samplerate else float("inf")
    if duration_s > limit_s:
        raise input_error(loc, f"audio is {duration_s:.1f} s long; the limit is max_audio_s={limit_s}")


def check_image_header(data: bytes, loc: tuple[Any, ...], limits: dict[str, int]) -> None:
    """Refuse an image over ``max_image_pixels`` from its header alone (no pixel is decoded)."""
    from PIL import Image

    limit = binary_limit(limits, "max_image_pixels")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides here
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
    except Image.DecompressionBombError:
        raise input_error(loc, f"image is over the limit max_image_pixels={limit}") from None
    except Exception:  # undecodable: the worker fails the job with the decoder's reason
        return
    if width * height > limit:
        raise input_error(loc, f"image is {width}x{height} pixels; the limit is max_image_pixels={limit}")


HEADER_CHECKS = {"audio": check_audio_header, "image": check_image_header}
