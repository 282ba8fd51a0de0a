"""Binary inputs (audio, images) leave the request before the job is stored.

Inline base64 is bounded before it is decoded; uploaded files are bounded by
the request limit and the kind's ``max_input_bytes``. The bytes go to the
artifact store and the job's input keeps only ``{"artifact": "input-<field>"}``,
so PostgreSQL never holds blobs.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from fastapi.exceptions import RequestValidationError

from jobs.kinds import BinaryInput, Schema

DEFAULT_MAX_INPUT_BYTES = 20_000_000  # per binary input, unless the models file says otherwise


@dataclass(frozen=True)
class PendingFile:
    name: str  # artifact name: input-<field>
    data: bytes
    content_type: str


def input_error(loc: tuple[Any, ...], msg: str) -> RequestValidationError:
    return RequestValidationError([{"loc": ("body", "input", *loc), "msg": msg, "type": "value_error"}])


def stage_binaries(
    parsed: Schema, *, uploads: dict[str, tuple[bytes, str]], limits: dict[str, int]
) -> tuple[dict[str, Any], list[PendingFile]]:
    """The job's stored input and the files to store for it.

    ``uploads`` maps an input field to (bytes, content type) from a multipart request.
    """
    max_bytes = int(limits.get("max_input_bytes", DEFAULT_MAX_INPUT_BYTES))
    stored = parsed.model_dump(mode="json")
    files: list[PendingFile] = []
    for field in type(parsed).model_fields:
        value = getattr(parsed, field)
        if not isinstance(value, BinaryInput):
            continue
        name = f"input-{field}"
        if value.base64 is not None:
            data = decode_base64(value.base64, loc=(field, "base64"), max_bytes=max_bytes)
            content_type = "application/octet-stream"
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
