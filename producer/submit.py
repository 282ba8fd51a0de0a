"""Accepting a job: validate, stage binary inputs, commit, then publish.

Nothing is stored or published until every check has passed; a 202 means the
row is committed (a failed publish leaves it ``queued`` for the reconciler).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from jobs import batches, metrics, store
from jobs.errors import InvalidInput, MlqError
from jobs.ids import IdBuffer
from jobs.kinds import KINDS
from jobs.netfetch import check_url, fetch
from jobs.tables import Batch
from producer.batch_input import Parser
from producer.deps import State
from producer.inputs import NUL_MESSAGE, nul_at, stage_binaries
from producer.intake import Submission
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


def prepare_job(
    state: State,
    body: SubmitJob,
    *,
    principal: store.Principal,
    idempotency_key: str | None = None,
    uploads: dict[str, tuple[bytes, str]] | None = None,
) -> Submission:
    """Validate a job and store its binary inputs; nothing is in PostgreSQL yet. Blocking only
    when the job has files or a webhook (a download, a DNS lookup): see ``needs_thread``."""
    if body.kind not in KINDS:
        raise body_error(("kind",), f"unknown job kind {body.kind!r}; known kinds: {', '.join(sorted(KINDS))}")
    spec = state.models.spec(body.kind)
    if spec is None:
        raise body_error(("kind",), f"kind {body.kind!r} is not served here: the models file has no model for it")
    for name, value in (("input", body.input), ("metadata", body.metadata)):
        if (loc := nul_at(value)) is not None:
            raise body_error((name, *loc), NUL_MESSAGE)
    try:
        parsed = KINDS[body.kind].validate_input(body.input, limits=spec.limits)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", "input", *e["loc"])} for e in exc.errors(include_url=False)]
        ) from None
    if body.webhook_url is not None:
        check_webhook(body.webhook_url, state=state, loc=("webhook_url",))
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
    return Submission(job=new, principal=principal, files=saved)


def needs_thread(body: SubmitJob, *, uploads: dict[str, tuple[bytes, str]] | None = None) -> bool:
    """Whether preparing ``body`` may block (files to write, a URL to fetch, a webhook host to
    resolve); a plain JSON job is validated on the event loop, sparing a thread hop."""
    return bool(uploads) or body.webhook_url is not None or any(isinstance(v, dict) for v in body.input.values())


async def prepared(
    state: State,
    body: SubmitJob,
    *,
    principal: store.Principal,
    idempotency_key: str | None = None,
    uploads: dict[str, tuple[bytes, str]] | None = None,
) -> Submission:
    """``prepare_job`` on the event loop when it cannot block, else on a worker thread; then
    ``state.intake.accept`` commits and publishes it with whatever else arrived meanwhile."""
    if needs_thread(body, uploads=uploads):
        return await run_in_threadpool(
            prepare_job, state, body, principal=principal, idempotency_key=idempotency_key, uploads=uploads
        )
    return prepare_job(state, body, principal=principal, idempotency_key=idempotency_key, uploads=uploads)


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
