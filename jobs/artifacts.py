"""The artifact store: binary inputs and outputs live here, PostgreSQL holds references.

A local folder by default (``MLQ_ARTIFACTS_DIR``). The interface is what an
S3-compatible store would implement too: put bytes under a key, get them back.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


@dataclass(frozen=True)
class StoredArtifact:
    name: str
    content_type: str
    size_bytes: int
    sha256: str
    uri: str


class ArtifactStore(Protocol):
    def put(self, *, job_id: uuid.UUID, name: str, data: bytes, content_type: str) -> StoredArtifact: ...

    def open(self, uri: str) -> bytes: ...

    def discard(self, *, job_id: uuid.UUID) -> None: ...


def check_name(name: str) -> str:
    if not SAFE_NAME.match(name):
        raise ValueError(f"artifact name {name!r} must match {SAFE_NAME.pattern}")
    return name


class LocalArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def put(self, *, job_id: uuid.UUID, name: str, data: bytes, content_type: str) -> StoredArtifact:
        path = self.root / str(job_id) / check_name(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)  # readers never see half a file
        return StoredArtifact(
            name=name,
            content_type=content_type,
            size_bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            uri=path.as_uri(),
        )

    def discard(self, *, job_id: uuid.UUID) -> None:
        """Remove files stored for a job that was never committed."""
        shutil.rmtree(self.root / str(job_id), ignore_errors=True)

    def open(self, uri: str) -> bytes:
        path = Path(uri.removeprefix("file://")).resolve()
        if self.root not in path.parents:
            raise PermissionError(f"{uri} is outside the artifact store")
        return path.read_bytes()
