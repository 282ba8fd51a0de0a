"""OpenAI's Batch API over mlq's bulk runs: an uploaded file's lines become a bulk run's jobs
(one table, one runner, one result stream), and its output and error files are read from
those jobs, each line's ``body`` being what the synchronous route answers.

OpenAI's rule for bad lines: a line that breaks a rule is kept as a job that failed with
``invalid_input`` (it lands in the error file) and the others run. mlq's native JSONL runs
keep their all-or-nothing rule (producer/batch_input.py).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import ValidationError
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from jobs import files
from jobs.batches import BatchItem
from jobs.errors import InvalidField
from jobs.ids import IdBuffer, new_id
from jobs.queues import BATCH_PRIORITY
from jobs.status import JobStatus
from jobs.tables import Batch, File, Job
from producer.batch_input import BatchRefused, Parser, parse_jsonl
from producer.deps import State
from producer.errors import openai_param
from producer.openai_calls import BATCHABLE, Done, Endpoint, Made
from producer.routes.models import kind_named
from producer.schemas import BatchOptions, BatchView
from producer.submit import accept_batch


@dataclass
class LineParser(Parser):
    """Reads lines ``{"custom_id", "method": "POST", "url", "body"}`` of one endpoint: a good
    line is validated as the route validates its body, then as its kind validates a job; a
    bad one is stored as refused, with the parameter and the rule it broke."""

    endpoint: Endpoint | None = None
    last_refused: int = 0

    FIELDS: ClassVar[tuple[str, ...]] = ("custom_id", "method", "url", "body")
    UNIT: ClassVar[str] = "file"

    def add(self, number: int, raw: Any) -> None:
        custom_id = self.envelope(number, raw)
        if custom_id is None:
            return None
        if raw.get("method") != "POST":
            return self.error(number, custom_id, ["method"], "method must be POST")
        if raw.get("url") != self.path:
            return self.error(number, custom_id, ["url"], f"this batch's endpoint is {self.path}; url must be it")
        try:
            kind, made = self.request(raw.get("body"))
        except InvalidField as exc:
            return self.error(number, custom_id, list(exc.loc), str(exc))
        self.validate(number, custom_id, kind, made.inputs[0], metadata_json=json.dumps({"openai": made.options}))
        return None

    @property
    def path(self) -> str:
        assert self.endpoint is not None
        return self.endpoint.path

    def request(self, body: Any) -> tuple[str, Made]:
        """The line's body as the route reads it: its kind and its one job."""
        endpoint = self.endpoint
        assert endpoint is not None
        try:
            parsed = endpoint.request.model_validate(body)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            raise InvalidField(("body", *first["loc"]), first["msg"]) from None
        named = endpoint.model_of(parsed)
        kind = kind_named(self.models, named)
        if kind != endpoint.kind:
            served = f"serves {kind}" if kind else "is not served here"
            raise InvalidField(("body", "model"), f"model {named!r} {served}, not {endpoint.kind}")
        made = endpoint.jobs(parsed)
        if len(made.inputs) != 1:
            raise InvalidField(("body", made.listed or "input"), "one input per line in a batch: give each a line")
        return kind, made

    def error(self, number: int, custom_id: str | None, loc: list[Any], msg: str) -> None:
        """Store the line as refused (once: a line's later errors are not repeated)."""
        if number == self.last_refused:
            return
        self.last_refused = number
        endpoint = self.endpoint
        assert endpoint is not None
        if loc[:1] == ["input"]:  # the kind's field, by the request's name
            field = str(loc[1]) if len(loc) > 1 else ""
            loc = ["body", endpoint.rename.get(field, next(iter(endpoint.rename.values())))]
        param = openai_param(loc if loc[:1] == ["body"] else ["body", *loc])
        message = f"{param}: {msg}" if param else msg
        spec = self.models.spec(endpoint.kind)
        model, profile = (spec.model if spec is not None else ""), self.models.profile
        self.refused += 1
        if self.digest is not None:
            self.digest.update(f"{number}:{message}\n".encode())
        self.sink(BatchItem(new_id(), number, custom_id, endpoint.kind, model, profile, "{}", 0, "{}", message))

    def finish(self) -> dict[str, IdBuffer]:
        if not self.count:
            raise BatchRefused("the file has no lines")
        return self.ids


def accept(
    state: State, request: Any, *, principal: Any, content: bytes, idempotency_key: str | None
) -> tuple[BatchView, bool]:
    """Store an OpenAI batch: its file's lines (good ones queued and published, bad ones
    refused), its endpoint and its result files, in one transaction. Runs on a worker thread."""
    endpoint = BATCHABLE[request.endpoint]
    if state.models.spec(endpoint.kind) is None:
        raise InvalidField(("body", "endpoint"), f"{request.endpoint} needs kind {endpoint.kind}, not served here")
    parser = LineParser(
        models=state.models,
        default_kind=None,
        max_lines=state.settings.batch_max_lines,
        max_errors=state.settings.batch_max_errors,
        endpoint=endpoint,
    )

    def made(session: Session, batch: Batch) -> None:
        batch.endpoint, batch.kind = request.endpoint, endpoint.kind
        batch.input_file_id, batch.completion_window = request.input_file_id, request.completion_window
        files.add_result_files(session, batch=batch)

    def parse(p: Parser) -> dict[str, IdBuffer]:
        if p.digest is not None:
            p.digest.update(f"{request.endpoint} {request.input_file_id}\n".encode())
        return parse_jsonl(content.splitlines(), p)

    options = BatchOptions(priority=BATCH_PRIORITY, metadata=request.metadata or {})
    return accept_batch(
        state, parse, parser, principal=principal, options=options, idempotency_key=idempotency_key, made=made
    )


def input_content(state: State, *, tenant_id: uuid.UUID, file_id: uuid.UUID) -> bytes:
    """The bytes of an uploaded batch input file; a 404 or 400 naming ``input_file_id``."""
    with state.sessions() as session:
        found = files.get_file(session, tenant_id=tenant_id, file_id=file_id)
    if found is None:
        raise LookupError(f"no file {file_id}; POST /v1/files uploads one")
    if found.purpose != "batch" or found.uri is None:
        raise InvalidField(("body", "input_file_id"), f"file {file_id} is a {found.purpose} file, not purpose=batch")
    return state.artifacts.open(found.uri)


# --- the output and error files -----------------------------------------------------------------

ROWS_PER_FETCH = 2000


def result_lines(session: Session, *, batch: Batch, part: str) -> Iterator[str]:
    """The lines of a run's output (succeeded) or error file (failed, refused, cancelled), in
    input order, read from its jobs with a server-side cursor."""
    endpoint = BATCHABLE[batch.endpoint or ""]
    wanted = [JobStatus.succeeded.value] if part == "output" else [JobStatus.failed.value, JobStatus.cancelled.value]
    query = (
        select(Job.id, Job.custom_id, Job.status, Job.output, Job.error_code, Job.error_message, Job.created_at,
               Job.model, Job.metadata_["openai"])
        .where(Job.batch_id == batch.id, Job.status.in_(wanted))
        .order_by(Job.batch_index)
        .execution_options(stream_results=True, yield_per=ROWS_PER_FETCH)
    )  # fmt: skip
    for partition in session.execute(query).partitions(ROWS_PER_FETCH):
        yield "".join(result_line(row, endpoint) + "\n" for row in partition)


def result_line(row: Any, endpoint: Endpoint) -> str:
    job_id, custom_id, status, output, error_code, error_message, created_at, model, options = row
    line: dict[str, Any] = {"id": f"batch_req_{job_id.hex}", "custom_id": custom_id, "response": None, "error": None}
    if status == JobStatus.succeeded.value:
        answer = endpoint.answer(options or {}, model, [Done(job_id, created_at, output or {})])
        line["response"] = {"status_code": 200, "request_id": str(job_id), "body": answer.model_dump(mode="json")}
    else:
        code = error_code or status
        line["error"] = {"code": code, "message": error_message or f"the request was {status}", "job_id": str(job_id)}
    return json.dumps(line, separators=(",", ":"))


def counted(state: State, found: File) -> int:
    """A result file's size in bytes, counted from its lines the first time it is asked for."""
    if found.bytes is not None:
        return found.bytes
    with state.sessions() as session:
        batch = session.get(Batch, found.batch_id)
        size = (
            0
            if batch is None
            else sum(len(c.encode()) for c in result_lines(session, batch=batch, part=found.part or ""))
        )
    with state.sessions.begin() as session:
        session.execute(update(File).where(File.id == found.id).values(bytes=size))
    return size
