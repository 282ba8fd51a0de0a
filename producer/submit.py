"""Accepting a job: validate, stage binary inputs, commit, then publish.

Nothing is stored or published until every check has passed; a 202 means the
row is committed (a failed publish leaves it ``queued`` for the reconciler).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError
from sqlalchemy.orm import Session

from jobs import batches, keys, metrics, store
from jobs.errors import Conflict, InvalidField, InvalidInput
from jobs.ids import IdBuffer
from jobs.kinds import KINDS
from jobs.modelsfile import ModelSpec
from jobs.schemas import Schema, binaries, binary_limit
from jobs.tables import Batch
from producer.addresses import acheck_url
from producer.batch_input import Parser
from producer.deps import State
from producer.inputs import input_error, stage_binaries, unstorable
from producer.intake import Submission
from producer.schemas import BatchOptions, BatchView, SubmitJob


def body_error(loc: tuple[Any, ...], msg: str) -> InvalidField:
    return InvalidField(("body", *loc), msg)


async def check_webhook(url: str, *, state: State, loc: tuple[Any, ...]) -> None:
    """Refuse (422) a webhook URL that is not http(s) or reaches a non-public address."""
    try:
        await acheck_url(url, allow_hosts=state.settings.allow_hosts)
    except InvalidInput as exc:
        raise body_error(loc, str(exc)) from None


def validated(state: State, body: SubmitJob) -> tuple[ModelSpec, Schema]:
    """The kind's model and the parsed input; a 422 naming the field otherwise. Pure CPU."""
    if body.kind not in KINDS:
        raise body_error(("kind",), f"unknown job kind {body.kind!r}; known kinds: {', '.join(sorted(KINDS))}")
    spec = state.models.spec(body.kind)
    if spec is None:
        raise body_error(("kind",), f"kind {body.kind!r} is not served here: the models file has no model for it")
    for name, value in (("input", body.input), ("metadata", body.metadata)):
        if (found := unstorable(value)) is not None:
            raise body_error((name, *found[0]), found[1])
    try:
        parsed = KINDS[body.kind].validate_input(spec.with_defaults(body.input), limits=spec.limits)
    except ValidationError as exc:
        raise InvalidField.of(exc.errors(include_url=False), "body", "input") from None
    return spec, parsed


async def prepared(
    state: State,
    body: SubmitJob,
    *,
    principal: keys.Principal,
    idempotency_key: str | None = None,
    uploads: dict[str, tuple[bytes, str]] | None = None,
) -> Submission:
    """A job validated, its URL inputs downloaded (on the event loop) and its files stored (on a
    worker thread, only when it has any); nothing is in PostgreSQL yet. Then
    ``state.intake.accept`` commits and publishes it with whatever else arrived meanwhile."""
    spec, parsed = validated(state, body)
    if body.webhook_url is not None:
        await check_webhook(body.webhook_url, state=state, loc=("webhook_url",))
    fetched = await downloaded(state, parsed, tenant_id=principal.tenant_id, limits=spec.limits)
    new = store.NewJob(
        kind=body.kind,
        model=spec.model,
        profile=state.models.profile,
        input=parsed.model_dump(mode="json"),
        priority=body.priority,
        metadata=body.metadata,
        max_attempts=spec.max_attempts,
        idempotency_key=idempotency_key,
        webhook_url=body.webhook_url,
    )
    if not (uploads or binaries(parsed)):
        return Submission(job=new, principal=principal)

    def stage() -> Submission:
        stored, files = stage_binaries(parsed, uploads=uploads or {}, fetched=fetched, limits=spec.limits)
        job = replace(new, input=stored)
        put = state.artifacts.put
        saved = [put(job_id=job.id, name=f.name, data=f.data, content_type=f.content_type) for f in files]
        return Submission(job=job, principal=principal, files=saved)

    return await run_in_threadpool(stage)


async def downloaded(
    state: State, parsed: Schema, *, tenant_id: uuid.UUID, limits: dict[str, int]
) -> dict[str, tuple[bytes, str]]:
    """The input's fields given by URL, downloaded: field -> (bytes, content type)."""
    max_bytes = binary_limit(limits, "max_input_bytes")
    fetched: dict[str, tuple[bytes, str]] = {}
    for field, value in binaries(parsed):
        if value.url is not None:
            try:
                fetched[field] = await state.downloads.get(value.url, tenant_id=tenant_id, max_bytes=max_bytes)
            except InvalidInput as exc:
                raise input_error((field, "url"), str(exc)) from None
    return fetched


def json_field(fields: dict[str, Any], name: str) -> Any:
    """A multipart form field that holds JSON (``{}`` when absent); a 422 naming it otherwise."""
    try:
        return json.loads(fields.get(name) or "{}")
    except json.JSONDecodeError as exc:
        raise body_error((name,), f"form field is not JSON: {exc}") from None


def accept_batch(
    state: State,
    parse: Callable[[Parser], dict[str, IdBuffer]],
    parser: Parser,
    *,
    principal: keys.Principal,
    options: BatchOptions,
    idempotency_key: str | None = None,
    made: Callable[[Session, Batch], None] | None = None,
) -> tuple[BatchView, bool]:
    """Validate and store a bulk run in one transaction: lines stream into COPY as they pass,
    and one bad line rolls everything back (BatchRefused). Then publish one message per chunk
    of ids. Returns the batch as the API shows it (built before the commit: an answer that
    fails stores nothing) and whether it is new: a reused ``idempotency_key`` with the same
    lines and options returns the stored run, with others a Conflict. ``made`` adds to the new
    batch row in its transaction (an OpenAI batch's endpoint and files)."""
    if idempotency_key is not None:
        parser.digest = hashlib.sha256(options.model_dump_json().encode())
    with state.sessions.begin() as session:
        batch = batches.insert_batch(
            session, tenant_id=principal.tenant_id, priority=options.priority, metadata=options.metadata,
            webhook_url=options.webhook_url, idempotency_key=idempotency_key,
        )  # fmt: skip
        if batch is None:
            assert idempotency_key is not None
            return replayed(session, parse, parser, tenant_id=principal.tenant_id, idempotency_key=idempotency_key)
        if made is not None:
            made(session, batch)
        with batches.copy_jobs(session, batch=batch, kinds=state.models.kinds) as write:
            parser.sink = write
            ids = parse(parser)
        queued = sum(len(v) for v in ids.values())
        batch.total = queued + parser.refused
        if len(ids) == 1:
            batch.kind = next(iter(ids))
        batch.request_sha256 = parser.digest.hexdigest() if parser.digest is not None else None
        view = BatchView.of(batch, batches.Counts(total=batch.total, queued=queued, failed=parser.refused))
    for kind, kind_ids in sorted(ids.items()):
        metrics.JOBS_SUBMITTED.labels(kind, principal.tenant_name).inc(len(kind_ids))
        size = state.models.kinds[kind].batch_chunk_size
        state.publisher.publish_chunks(kind=kind, chunks=kind_ids.chunks(size), priority=options.priority)
    return view, True


def replayed(
    session: Session,
    parse: Callable[[Parser], dict[str, IdBuffer]],
    parser: Parser,
    *,
    tenant_id: uuid.UUID,
    idempotency_key: str,
) -> tuple[BatchView, bool]:
    """The run stored earlier under ``idempotency_key``, when this one has the same lines and options."""
    earlier = batches.get_batch_by_key(session, tenant_id=tenant_id, idempotency_key=idempotency_key)
    assert earlier is not None and parser.digest is not None  # the INSERT conflicted on this key
    parse(parser)  # validated and digested only: nothing is written
    if parser.digest.hexdigest() != earlier.request_sha256:
        raise Conflict(f"Idempotency-Key {idempotency_key!r} was already used for a different bulk run ({earlier.id})")
    return BatchView.of(earlier, batches.counts(session, batch_ids=[earlier.id])[earlier.id]), False
