"""The adapter interface: ``load(device)`` once per process, then ``predict`` on batches.

Life cycle, as the runner drives it::

    adapter = AdapterClass(spec)         # cheap; validates options eagerly
    adapter.load(device="cpu")           # once per worker process
    item = adapter.prepare(input)        # per job; raise InvalidInput for a bad one
    predictions = adapter.predict([item, ...])  # one Prediction per item, same order

``prepare`` isolates per-item failures (an undecodable image fails its own job);
``predict`` sees only items that prepared cleanly.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from jobs.kinds import Schema
from jobs.modelsfile import ModelSpec

In = TypeVar("In", bound=Schema)


@dataclass(frozen=True)
class Blob:
    """Binary output (a PNG, a WAV) that the runner stores as an artifact of the job."""

    name: str
    content_type: str
    data: bytes


@dataclass
class Prediction:
    output: Schema
    blobs: list[Blob] = field(default_factory=list)


class Adapter(ABC, Generic[In]):
    """One kind's model code. Subclasses set ``kind`` and implement load and predict."""

    kind: ClassVar[str]

    def __init__(
        self, spec: ModelSpec, *, source: str | None = None, resolve: Callable[[str], str] | None = None
    ) -> None:
        if spec.kind != self.kind:
            raise ValueError(f"{type(self).__name__} serves {self.kind!r}, not {spec.kind!r}")
        self.spec = spec
        self.source = source or spec.model  # resolved local path or hub id
        self.resolve = resolve or (lambda ref: ref)  # locates a second model an adapter names in its options
        self.device = "cpu"

    @abstractmethod
    def load(self, device: str) -> None:
        """Load weights onto ``device`` ("cpu", "cuda"); called once per process."""

    def prepare(self, item: In) -> Any:
        """Per-item decoding and checks; raise jobs.errors.InvalidInput for a bad item."""
        return item

    @abstractmethod
    def predict(self, batch: list[Any]) -> list[Prediction]:
        """Run the model on prepared items; return one Prediction per item, in order."""
