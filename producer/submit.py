"""Accepting a job: validate, stage binary inputs, commit, then publish.

Nothing is stored or published until every check has passed; a 202 means the
row is committed (a failed publish leaves it ``queued`` for the reconciler).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import HTTPException, status
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from jobs import batches, metrics, store
from jobs.errors import InvalidInput, MlqError
from jobs.ids import IdBuffer
from jobs.kinds import KINDS
from jobs.netfetch import check_url, fetch
from jobs.tables import Batch, Job
from producer.batch_input import Parser
from producer.deps import State
from producer.inputs import stage_binaries
from producer.ratelimit import ACTIVE_RETRY_AFTER_S, too_many
from producer.schemas import SubmitJob


def body_error(loc: tuple[Any, ...], msg: str) -> RequestValidationError:
    return RequestValidationError([{"loc": ("body", *loc), "msg": msg, "type": "value_error"}])


def check_webhook(url: str, *, state: State, loc: tuple[Any, ...]) -> None:
    """Refuse (422) a webhook URL that is not http(s) or reaches a non-public address."""
    try:
        check_url(url, allow_hosts=state.settings.allow_hosts)
    except InvalidInput as exc:
        raise body_error(loc, str(exc)) from None


def download(state: State, url: str, max_bytes: int) -> tuple[bytes, str]:
    """An input given by URL, fetched now (public addresses only); InvalidInput says why not."""
    settings = state.settings
    try:
        answer = fetch(
            url, max_bytes=max_bytes, timeout_s=settings.input_fetch_timeout_s, allow_hosts=settings.allow_hosts
        )
    except MlqError as exc:  # refused (unsafe address, too large) or failed (timeout, no such host)
        raise InvalidInput(f"{exc.code}: {exc}") from None
    if not 200 <= answer.status < 300:
        raise InvalidInput(f"the URL answered HTTP {answer.status}; it must answer 200 with the file")
    return answer.body, answer.headers.get("content-type", "application/octet-stream").split(";")[0]


def check_limits(state: State, *, principal: store.Principal, kind: str) -> None:
    """The tenant's quota of active jobs of ``kind``, then its jobs per minute: 429 with
    Retry-After when over either, before anything is stored."""
    settings = state.settings
    max_active = principal.max_active_jobs_per_kind
    max_active = settings.max_active_jobs_per_kind if max_active is None else max_active
    if max_active:

        def count() -> int:
            with state.sessions() as session:
                return store.active_jobs(session, tenant_id=principal.tenant_id, kind=kind)

        active = state.limiter.active(tenant_id=principal.tenant_id, kind=kind, count=count)
        if active >= max_active:
            raise too_many(
                f"this tenant has {active} {kind} jobs queued or running; the limit is "
                f"max_active_jobs_per_kind={max_active}: wait for some to finish, or send a bulk run",
                retry_after_s=ACTIVE_RETRY_AFTER_S,
            )
    per_minute = principal.jobs_per_minute
    state.limiter.take(
        tenant_id=principal.tenant_id, jobs=1, per_minute=settings.jobs_per_minute if per_minute is None else per_minute
    )


def accept_job(
    state: State,
    body: SubmitJob,
    *,
    principal: store.Principal,
    idempotency_key: str | None = None,
    uploads: dict[str, tuple[bytes, str]] | None = None,
) -> tuple[Job, bool]:
    """Returns (job, created). An Idempotency-Key used before returns the earlier job."""
    if body.kind not in KINDS:
        raise body_error(("kind",), f"unknown job kind {body.kind!r}; known kinds: {', '.join(sorted(KINDS))}")
    spec = state.models.spec(body.kind)
    if spec is None:
        raise body_error(("kind",), f"kind {body.kind!r} is not served here: the models file has no model for it")
    try:
        parsed = KINDS[body.kind].validate_input(body.input, limits=spec.limits)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", "input", *e["loc"])} for e in exc.errors(include_url=False)]
        ) from None
    if body.webhook_url is not None:
        check_webhook(body.webhook_url, state=state, loc=("webhook_url",))
    check_limits(state, principal=principal, kind=body.kind)
    stored_input, files = stage_binaries(
        parsed, uploads=uploads or {}, limits=spec.limits, download=lambda url, limit: download(state, url, limit)
    )
    new = store.NewJob(
        kind=body.kind,
        model=spec.model,
        profile=state.models.profile,
        input=stored_input,
        priority=body.priority,
        metadata=body.metadata,
        max_attempts=spec.max_attempts,
        idempotency_key=idempotency_key,
        webhook_url=body.webhook_url,
    )
    saved = [state.artifacts.put(job_id=new.id, name=f.name, data=f.data, content_type=f.content_type) for f in files]
    try:
        with state.sessions.begin() as session:
            job, created = store.insert_job(session, tenant_id=principal.tenant_id, job=new)
            if created:
                store.add_artifacts(session, rows=[(job.id, a) for a in saved])
    except Exception:
        state.artifacts.discard(job_id=new.id)
        raise
    if not created:
        state.artifacts.discard(job_id=new.id)
        if job.kind != new.kind or job.input != new.input:
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                f"Idempotency-Key {idempotency_key!r} was already used for a different job ({job.id})",
            )
        return job, False
    state.publisher.publish(kind=job.kind, job_ids=[job.id], priority=job.priority)
    metrics.JOBS_SUBMITTED.labels(job.kind, principal.tenant_name).inc()
    state.limiter.accepted(tenant_id=principal.tenant_id, kind=job.kind)
    return job, True


def accept_batch(
    state: State,
    parse: Callable[[Parser], dict[str, IdBuffer]],
    parser: Parser,
    *,
    principal: store.Principal,
    priority: int,
    metadata: dict[str, Any],
    webhook_url: str | None = None,
) -> tuple[Batch, int]:
    """Validate and store a bulk run in one transaction: lines stream into COPY as they pass,
    and one bad line rolls everything back (BatchRefused). Then publish one message per chunk
    of ids. Returns the batch and its size."""
    with state.sessions.begin() as session:
        batch = batches.insert_batch(
            session, tenant_id=principal.tenant_id, priority=priority, metadata=metadata, webhook_url=webhook_url
        )
        with batches.copy_jobs(session, batch=batch) as write:
            parser.sink = write
            ids = parse(parser)
        batch.total = sum(len(v) for v in ids.values())
        batch.kind = next(iter(ids)) if len(ids) == 1 else None
    for kind, kind_ids in sorted(ids.items()):
        metrics.JOBS_SUBMITTED.labels(kind, principal.tenant_name).inc(len(kind_ids))
        size = state.models.kinds[kind].batch_chunk_size
        state.publisher.publish_chunks(kind=kind, chunks=kind_ids.chunks(size), priority=priority)
    return batch, batch.total
