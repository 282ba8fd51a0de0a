"""The adapter interface: ``load(device)`` once per process, then ``predict`` on model calls.

Life cycle, as the runner drives it::

    adapter = AdapterClass(spec)         # cheap; validates options eagerly
    adapter.load(device="cpu")           # once per worker process: sets self.device, then load_weights
    item = adapter.prepare(input)        # per job; raise InvalidInput for a bad one
    predictions = adapter.predict([item, ...], stop=signal)  # one Prediction per item, same order

An ``interruptible`` adapter (generation: text, images, music) looks at the ``stop`` signal
it is given between steps and ends early when the runner asks (a soft time limit or a
cancel): it calls ``stop.check()`` after the model returns, which raises TimedOut or
Cancelled. Others ignore it. The runner sets nothing on an adapter.

``prepare`` isolates per-item failures (an undecodable image fails its own job);
``predict`` sees only items that prepared cleanly.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Literal, TypeVar, cast

from jobs.errors import Cancelled, TimedOut
from jobs.modelsfile import ModelSpec
from jobs.schemas import Schema

In = TypeVar("In", bound=Schema)  # what a job's input is, validated (jobs.kinds)
Prepared = TypeVar("Prepared")  # what prepare makes of it, and predict takes


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


class StopSignal:
    """Set by the runner from another thread; read by a model between its steps."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._error: TimedOut | Cancelled | None = None

    def request(self, error: TimedOut | Cancelled) -> None:
        if not self._event.is_set():
            self._error = error
            self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Raise the reason to stop, if one was given."""
        if self._error is not None:
            raise self._error


class Adapter(ABC, Generic[In, Prepared]):
    """One kind's model code, ``Adapter[Input, Prepared]``. Subclasses set ``kind`` and
    implement load and predict."""

    kind: ClassVar[str]
    interruptible: ClassVar[bool] = False  # predict looks at its stop signal between steps
    # what size() counts, so the runner can hold a model call to the models file's
    # max_batch_tokens or max_batch_pixels; None: batches are bounded by count only
    budget_unit: ClassVar[Literal["tokens", "pixels"] | None] = None

    def __init__(
        self,
        spec: ModelSpec,
        *,
        source: str | None = None,
        resolve: Callable[[str], str] | None = None,
        allow_unpinned: bool = False,  # a hub model may load at a moving revision (models/loading.py)
    ) -> None:
        if spec.kind != self.kind:
            raise ValueError(f"{type(self).__name__} serves {self.kind!r}, not {spec.kind!r}")
        self.spec = spec
        self.source = source or spec.model  # resolved local path or hub id
        self.resolve = resolve or (lambda ref: ref)  # locates a second model an adapter names in its options
        self.allow_unpinned = allow_unpinned
        self.device = "cpu"

    def pretrained_kwargs(self) -> dict[str, Any]:
        """What this adapter's ``from_pretrained`` calls pass: safetensors, no remote code, the pin."""
        from models.loading import pretrained_kwargs

        return pretrained_kwargs(self.spec, self.source, allow_unpinned=self.allow_unpinned)

    def load(self, device: str) -> None:
        """Load the weights onto ``device`` ("cpu", "cuda"); called once per process."""
        self.device = device
        self.load_weights(device)

    @abstractmethod
    def load_weights(self, device: str) -> None:
        """Each adapter's own loading, onto ``device`` (``self.device`` is set already)."""

    def prepare(self, item: In) -> Prepared:
        """Per-item decoding and checks; raise jobs.errors.InvalidInput for a bad item. By
        default the item itself, for adapters whose ``Prepared`` is their input."""
        return cast(Prepared, item)

    def prepare_many(self, items: list[In]) -> list[Prepared]:
        """``prepare`` for a claim's items at once (a tokenizer encodes a list faster than its
        texts one by one). Raising makes the runner prepare the items one by one, so a bad
        one fails alone."""
        return [self.prepare(item) for item in items]

    def footprint_bytes(self) -> int:
        """Bytes of weights this adapter holds (parameters and buffers of its torch modules,
        diffusers pipelines included), for a worker's memory budget."""
        import sys

        torch = sys.modules.get("torch")
        if torch is None:
            return 0
        modules: dict[int, Any] = {}
        for value in vars(self).values():
            parts = getattr(value, "components", None)  # a diffusers pipeline
            candidates = list(parts.values()) if isinstance(parts, dict) else [value]
            candidates += [getattr(value, "model", None)]  # an adapter wrapping another (moderation's images)
            for candidate in candidates:
                if isinstance(candidate, torch.nn.Module):
                    modules[id(candidate)] = candidate
        tensors = {id(t): t for m in modules.values() for t in [*m.parameters(), *m.buffers()]}
        return sum(t.numel() * t.element_size() for t in tensors.values())

    def size(self, prepared: Prepared) -> int:
        """A prepared item's size in ``budget_unit`` (tokens, pixels)."""
        return 1

    @abstractmethod
    def predict(self, batch: list[Prepared], *, stop: StopSignal | None = None) -> list[Prediction]:
        """Run the model on prepared items; return one Prediction per item, in order."""
