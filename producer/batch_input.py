"""Bulk-run input: JSONL lines (or a JSON list) validated whole before anything is stored.

Each line is ``{"custom_id": "...", "kind"?: "...", "input": {...}}``; a batch-wide
``kind`` may be given once. Any bad line refuses the whole batch with the first
errors by line number and custom_id.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from jobs.batches import BatchItem
from jobs.kinds import KINDS, BinaryInput
from jobs.modelsfile import ModelsConfig


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
    models: ModelsConfig
    default_kind: str | None
    max_lines: int
    max_errors: int
    items: list[BatchItem] = field(default_factory=list)
    errors: list[LineError] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    kinds: set[str] = field(default_factory=set)

    def add(self, number: int, raw: Any) -> None:
        if len(self.items) + len(self.errors) >= self.max_lines:
            raise BatchRefused(f"more than batch_max_lines={self.max_lines} lines; split the batch")
        if not isinstance(raw, dict):
            return self.error(number, None, [], "each line must be a JSON object")
        custom_id = raw.get("custom_id")
        if not isinstance(custom_id, str) or not 1 <= len(custom_id) <= 255:
            return self.error(number, None, ["custom_id"], "custom_id must be a string of 1 to 255 characters")
        if custom_id in self.seen:
            return self.error(number, custom_id, ["custom_id"], f"duplicate custom_id {custom_id!r}")
        self.seen.add(custom_id)
        unknown = set(raw) - {"custom_id", "kind", "input"}
        if unknown:
            return self.error(
                number, custom_id, [sorted(unknown)[0]], "unknown field; lines have custom_id, kind, input"
            )
        self.validate(number, custom_id, raw.get("kind") or self.default_kind, raw.get("input"))

    def validate(self, number: int, custom_id: str, kind: Any, data: Any) -> None:
        if kind not in KINDS:
            return self.error(number, custom_id, ["kind"], f"unknown or missing kind {kind!r}")
        spec = self.models.spec(kind)
        if spec is None:
            return self.error(number, custom_id, ["kind"], f"kind {kind!r} is not served here")
        try:
            parsed = KINDS[kind].validate_input(data, limits=spec.limits)
        except ValidationError as exc:
            for e in exc.errors(include_url=False)[:3]:
                self.error(number, custom_id, ["input", *e["loc"]], e["msg"])
            return None
        if any(isinstance(getattr(parsed, f), BinaryInput) for f in type(parsed).model_fields):
            return self.error(number, custom_id, ["input"], "files are not accepted in batches; submit single jobs")
        self.kinds.add(kind)
        self.items.append(
            BatchItem(
                index=number, custom_id=custom_id, kind=kind, model=spec.model, profile=self.models.profile,
                input_json=parsed.model_dump_json(), max_attempts=spec.max_attempts,
            )
        )  # fmt: skip
        return None

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

    def finish(self) -> list[BatchItem]:
        if self.errors:
            self.refuse()
        if not self.items:
            raise BatchRefused("the batch has no lines")
        return self.items


def parse_jsonl(lines: Iterable[bytes], parser: Parser) -> list[BatchItem]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            parser.error(number, None, [], f"not JSON: {exc}")
            continue
        parser.add(number, raw)
    return parser.finish()


def parse_list(items: list[Any], parser: Parser) -> list[BatchItem]:
    for number, raw in enumerate(items, start=1):
        parser.add(number, raw)
    return parser.finish()
