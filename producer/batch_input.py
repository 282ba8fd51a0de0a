"""Bulk-run input: JSONL lines (or a JSON list) validated whole before anything is stored.

Each line is ``{"custom_id": "...", "kind"?: "...", "input": {...}}``; a batch-wide
``kind`` may be given once. Any bad line refuses the whole batch with the first
errors by line number and custom_id.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import ValidationError
from pydantic_core import from_json

from jobs.batches import BatchItem
from jobs.ids import IdBuffer, new_id
from jobs.kinds import KINDS
from jobs.modelsfile import ModelsConfig
from jobs.schemas import binaries
from producer.inputs import unstorable


@dataclass
class LineError:
    line: int
    custom_id: str | None
    loc: list[str | int]
    msg: str


@dataclass
class BatchRefused(Exception):
    """The batch is refused whole; nothing was stored or published."""

    message: str
    errors: list[LineError] = field(default_factory=list)


@dataclass
class Parser:
    """Validates lines one by one and hands each good one to ``sink`` (the COPY writer)
    while no line has failed; holds only the ids to publish, not the items."""

    models: ModelsConfig
    default_kind: str | None
    max_lines: int
    max_errors: int
    sink: Callable[[BatchItem], None] = lambda item: None
    ids: dict[str, IdBuffer] = field(default_factory=dict)  # per kind, in input order
    count: int = 0
    refused: int = 0  # lines stored as refused (OpenAI's Batch API); a native run has none
    errors: list[LineError] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    contexts: dict[str, dict[str, Any]] = field(default_factory=dict)
    digest: Any = None  # a hashlib object fed each valid line (custom_id, kind, input), when one is wanted

    FIELDS: ClassVar[tuple[str, ...]] = ("custom_id", "kind", "input")  # a line's fields, as errors name them
    UNIT: ClassVar[str] = "batch"  # what the sender splits when it has too many lines

    def add(self, number: int, raw: Any) -> None:
        custom_id = self.envelope(number, raw)
        if custom_id is not None:
            self.validate(number, custom_id, raw.get("kind") or self.default_kind, raw.get("input"))

    def envelope(self, number: int, raw: Any) -> str | None:
        """What every line passes first: a count under the limit, an object with a new custom_id,
        storable text, and only the known fields. Returns its custom_id, or None once refused."""
        self.count += 1
        if self.count > self.max_lines:
            raise BatchRefused(f"more than batch_max_lines={self.max_lines} lines; split the {self.UNIT}")
        if not isinstance(raw, dict):
            self.error(number, None, [], "each line must be a JSON object")
            return None
        custom_id = raw.get("custom_id")
        if not isinstance(custom_id, str) or not 1 <= len(custom_id) <= 255:
            self.error(number, None, ["custom_id"], "custom_id must be a string of 1 to 255 characters")
            return None
        if (found := unstorable(raw)) is not None:  # anywhere in the line
            shown = None if found[0][:1] == ("custom_id",) else custom_id
            self.error(number, shown, list(found[0]), found[1])
            return None
        if custom_id in self.seen:
            self.error(number, custom_id, ["custom_id"], f"duplicate custom_id {custom_id!r}")
            return None
        self.seen.add(custom_id)
        if unknown := sorted(set(raw) - set(self.FIELDS)):
            self.error(number, custom_id, [unknown[0]], f"unknown field; lines have {', '.join(self.FIELDS)}")
            return None
        return custom_id

    def validate(self, number: int, custom_id: str, kind: Any, data: Any, *, metadata_json: str = "{}") -> None:
        if kind not in KINDS:
            return self.error(number, custom_id, ["kind"], f"unknown or missing kind {kind!r}")
        spec = self.models.spec(kind)
        if spec is None:
            return self.error(number, custom_id, ["kind"], f"kind {kind!r} is not served here")
        try:
            parsed = KINDS[kind].input_model.model_validate(spec.with_defaults(data), context=self.context(kind))
        except ValidationError as exc:
            for e in exc.errors(include_url=False)[:3]:
                self.error(number, custom_id, ["input", *e["loc"]], e["msg"])
            return None
        if binaries(parsed):
            return self.error(number, custom_id, ["input"], "files are not accepted in batches; submit single jobs")
        item = BatchItem(
            new_id(), number, custom_id, kind, spec.model, self.models.profile,
            parsed.model_dump_json(), spec.max_attempts, metadata_json,
        )  # fmt: skip
        if self.digest is not None:
            self.digest.update(f"{json.dumps([custom_id, kind])}{item.input_json}\n".encode())
        ids = self.ids.get(kind)
        if ids is None:
            ids = self.ids[kind] = IdBuffer()
        ids.append(item.id)
        if not self.errors:  # after a bad line, only validate: nothing more is written
            self.sink(item)
        return None

    def context(self, kind: str) -> dict[str, Any]:
        """The validation context of ``kind`` (its limits), made once per kind."""
        found = self.contexts.get(kind)
        if found is None:
            spec = self.models.spec(kind)
            found = self.contexts[kind] = {"limits": spec.limits if spec else {}}
        return found

    def error(self, number: int, custom_id: str | None, loc: list[Any], msg: str) -> None:
        self.errors.append(LineError(line=number, custom_id=custom_id, loc=loc, msg=msg))
        if len(self.errors) >= self.max_errors:
            self.refuse()

    def refuse(self) -> None:
        shown = self.errors[: self.max_errors]
        raise BatchRefused(
            f"{len(shown)}{'+' if len(shown) >= self.max_errors else ''} invalid line(s); nothing was stored",
            shown,
        )

    def finish(self) -> dict[str, IdBuffer]:
        """The ids to publish, per kind; raises BatchRefused if any line was bad."""
        if self.errors:
            self.refuse()
        if not self.ids:
            raise BatchRefused("the batch has no lines")
        return self.ids


def parse_jsonl(lines: Iterable[bytes], parser: Parser) -> dict[str, IdBuffer]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            raw = from_json(line)
        except ValueError as exc:
            parser.error(number, None, [], f"not JSON: {exc}")
            continue
        parser.add(number, raw)
    return parser.finish()


def parse_list(items: list[Any], parser: Parser) -> dict[str, IdBuffer]:
    for number, raw in enumerate(items, start=1):
        parser.add(number, raw)
    return parser.finish()
