"""Request and response bodies of the HTTP API (job inputs/outputs live in jobs.kinds)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from jobs.batches import Counts, status_of
from jobs.queues import BATCH_PRIORITY, DEFAULT_PRIORITY, MAX_BATCH_PRIORITY, MAX_PRIORITY, MIN_PRIORITY
from jobs.status import JobStatus
from jobs.store import JobRow
from jobs.tables import Artifact, Batch, Job

MAX_METADATA_KEYS = 32
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512
MAX_KIND_CHARS = 64


def stored_metadata(value: Any) -> dict[str, Any]:
    """A row's metadata as the API shows it: an object. A row stored before the API checked
    (or by hand) may hold another JSON value; it reads back under ``value``, as migration
    0008 keeps it, instead of failing the whole page that lists it."""
    return value if isinstance(value, dict) else {"value": value}


def _small_metadata(value: dict[str, Any]) -> dict[str, Any]:
    if len(value) > MAX_METADATA_KEYS:
        raise ValueError(f"metadata has {len(value)} keys; the limit is {MAX_METADATA_KEYS}")
    for key, item in value.items():
        if len(key) > MAX_METADATA_KEY_CHARS or (isinstance(item, str) and len(item) > MAX_METADATA_VALUE_CHARS):
            raise ValueError(
                f"metadata[{key[:MAX_METADATA_KEY_CHARS]!r}] is too long: keys up to {MAX_METADATA_KEY_CHARS} "
                f"and values up to {MAX_METADATA_VALUE_CHARS} characters"
            )
    return value


# Your own labels on a job or a bulk run: a flat object of at most 32 short keys and values.
Metadata = Annotated[
    dict[str, str | int | float | bool | None],
    AfterValidator(_small_metadata),
    Field(description="Your own labels, returned with the job: a flat object of at most 32 keys."),
]
# what every request body refuses: unknown fields, and numbers JSON cannot carry (NaN, Infinity)
STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)


class SubmitJob(BaseModel):
    model_config = STRICT

    kind: str = Field(
        max_length=MAX_KIND_CHARS, description="The job kind, e.g. text-classification; see GET /v1/models."
    )
    input: dict[str, Any] = Field(description="The kind's input; its schema is in GET /v1/models.")
    priority: int = Field(
        default=DEFAULT_PRIORITY, ge=MIN_PRIORITY, le=MAX_PRIORITY, description="9 is the most urgent."
    )
    metadata: Metadata = Field(default_factory=dict)
    webhook_url: str | None = Field(
        default=None, max_length=2000, description="POSTed a signed copy of the job when it finishes."
    )


class JobError(BaseModel):
    code: str
    message: str | None


class JobView(BaseModel):
    id: uuid.UUID
    kind: str
    model: str
    profile: str = Field(description="The models profile that served the job (demo models are tiny).")
    status: JobStatus
    priority: int
    input: dict[str, Any]
    output: dict[str, Any] | None
    error: JobError | None
    attempt: int
    history: list[dict[str, Any]] = Field(description="Attempts that ended without a result, and why.")
    metadata: dict[str, Any]
    webhook_url: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, job: Job | JobRow) -> JobView:
        return cls(
            id=job.id,
            kind=job.kind,
            model=job.model,
            profile=job.profile,
            status=JobStatus(job.status),
            priority=job.priority,
            input=job.input,
            output=job.output,
            error=JobError(code=job.error_code, message=job.error_message) if job.error_code else None,
            attempt=job.attempt,
            history=job.history,
            metadata=stored_metadata(job.metadata_),
            webhook_url=job.webhook_url,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
        )


class JobPage(BaseModel):
    data: list[JobView]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null at the end.")


class ModelView(BaseModel):
    kind: str
    model: str
    revision: str | None
    profile: str
    description: str
    limits: dict[str, int]
    max_batch_size: int
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]


class ArtifactView(BaseModel):
    name: str
    content_type: str
    size_bytes: int
    sha256: str
    url: str = Field(description="GET it with the same API key.")

    @classmethod
    def of(cls, artifact: Artifact) -> ArtifactView:
        return cls(
            name=artifact.name,
            content_type=artifact.content_type,
            size_bytes=artifact.size_bytes,
            sha256=artifact.sha256,
            url=f"/v1/jobs/{artifact.job_id}/artifacts/{artifact.name}",
        )


class BatchCounts(BaseModel):
    total: int
    queued: int
    running: int
    succeeded: int
    failed: int
    cancelled: int


class RequestCounts(BaseModel):
    """OpenAI's tally: completed (succeeded) and failed (failed, refused or cancelled)."""

    total: int
    completed: int
    failed: int


def unix_s(at: datetime | None) -> int | None:
    return None if at is None else int(at.timestamp())


class BatchView(BaseModel):
    """A bulk run, native or made through OpenAI's Batch API: OpenAI's batch object (its
    fields, unix-second timestamps) with mlq's own (kind, priority, counts, results_url)."""

    id: uuid.UUID
    object: Literal["batch"] = "batch"
    status: str = Field(description="in_progress, completed, failed, cancelling or cancelled")
    kind: str | None = Field(description="The kind of every line, or null when lines mix kinds.")
    priority: int
    counts: BatchCounts
    request_counts: RequestCounts
    metadata: dict[str, Any]
    webhook_url: str | None
    endpoint: str | None = Field(description="OpenAI batches: the endpoint every line calls; null for native runs.")
    input_file_id: uuid.UUID | None
    output_file_id: uuid.UUID | None = Field(description="OpenAI batches, once done: GET /v1/files/{id}/content.")
    error_file_id: uuid.UUID | None = Field(description="OpenAI batches, once done: the lines that failed.")
    completion_window: str | None
    errors: None = None
    created_at: int = Field(description="Unix seconds.")
    in_progress_at: int = Field(description="Unix seconds: lines run as soon as the run is accepted.")
    completed_at: int | None
    failed_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    expires_at: None = Field(default=None, description="Runs do not expire here.")
    cancel_requested_at: datetime | None
    results_url: str
    done_last_minute: int = Field(description="Items finished in the last minute: the run's share of the workers.")
    eta_s: float | None = Field(description="Seconds to go at the rate of the last minute (null: none finished).")

    @classmethod
    def of(cls, batch: Batch, tally: Counts) -> BatchView:
        state = status_of(batch, tally)
        finished = tally.last_finished_at or batch.created_at
        done = state in ("completed", "failed", "cancelled")
        return cls(
            id=batch.id,
            status=state,
            kind=batch.kind,
            priority=batch.priority,
            counts=BatchCounts(**{f: getattr(tally, f) for f in BatchCounts.model_fields}),
            request_counts=RequestCounts(
                total=tally.total, completed=tally.succeeded, failed=tally.failed + tally.cancelled
            ),
            metadata=stored_metadata(batch.metadata_),
            webhook_url=batch.webhook_url,
            endpoint=batch.endpoint,
            input_file_id=batch.input_file_id,
            output_file_id=batch.output_file_id if done else None,
            error_file_id=batch.error_file_id if done else None,
            completion_window=batch.completion_window,
            created_at=int(batch.created_at.timestamp()),
            in_progress_at=int(batch.created_at.timestamp()),
            completed_at=unix_s(finished) if state == "completed" else None,
            failed_at=unix_s(finished) if state == "failed" else None,
            cancelling_at=unix_s(batch.cancel_requested_at),
            cancelled_at=unix_s(max(finished, batch.cancel_requested_at or finished)) if state == "cancelled" else None,
            cancel_requested_at=batch.cancel_requested_at,
            results_url=f"/v1/batches/{batch.id}/results",
            done_last_minute=tally.last_minute,
            eta_s=tally.eta_s,
        )


class BatchPage(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchView]
    next_cursor: str | None
    has_more: bool = Field(description="Whether a next page exists (OpenAI's paging: ?after=last_id).")
    first_id: uuid.UUID | None = None
    last_id: uuid.UUID | None = None


class BatchOptions(BaseModel):
    """A bulk run's options: the JSON form's fields, a JSONL upload's form fields."""

    model_config = STRICT

    kind: str | None = Field(
        default=None, max_length=MAX_KIND_CHARS, description="Batch-wide kind for lines that name none."
    )
    priority: int = Field(default=BATCH_PRIORITY, ge=MIN_PRIORITY, le=MAX_BATCH_PRIORITY)
    metadata: Metadata = Field(default_factory=dict)
    webhook_url: str | None = Field(default=None, max_length=2000)


class SubmitBatch(BatchOptions):
    """The JSON form of a bulk run (JSONL uploads carry the same fields as form fields)."""

    items: list[dict[str, Any]] = Field(description='Lines: {"custom_id", "kind"?, "input"}.')
