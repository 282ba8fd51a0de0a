"""A worker process's loaded models: each kind's adapter loaded once, on first use or by the
preload thread (one lock per kind), kept within the memory budget by unloading the model
used longest ago, with what the runner needs to know of each (its spec, a model call's cost)."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from jobs import metrics
from jobs.errors import ModelNotConfigured
from jobs.modelsfile import ModelsConfig, ModelSpec
from models.base import Adapter
from models.loading import pick_device
from models.registry import create_adapter
from workers.calls import call_cost_tokens
from workers.outcomes import release_memory

log = logging.getLogger("mlq.runner")


class LoadedModels:
    def __init__(
        self, *, models: ModelsConfig, data_dir: Path, memory_budget_bytes: int = 0, allow_unpinned: bool = False
    ) -> None:
        self.allow_unpinned = allow_unpinned  # hub models at a moving revision (models/loading.py)
        self.models = models
        self.data_dir = data_dir
        self.adapters: dict[str, Adapter[Any, Any]] = {}
        self.memory_budget_bytes = memory_budget_bytes  # 0: keep every model loaded
        self.footprints: dict[str, int] = {}
        self.call_costs: dict[str, float] = {}  # kind -> a model call's cost in padded tokens (workers.calls)
        self.last_used: dict[str, float] = {}
        # One load at a time in a process: a model loads once, and two kinds' from_pretrained on two
        # threads (the preload thread and a job) broke one of them ("Cannot copy out of meta
        # tensor": transformers builds a model on the meta device and that is not thread-safe)
        self._loading = threading.Lock()

    def spec(self, kind: str) -> ModelSpec:
        spec = self.models.spec(kind)
        if spec is None:
            raise ModelNotConfigured(f"the models file {self.models.source} has no model for {kind!r}")
        return spec

    def get(self, kind: str) -> Adapter[Any, Any]:
        """The loaded adapter of ``kind``, loading it on first use (and, over the memory
        budget, unloading the models used longest ago first). Each kind loads once, and one
        at a time: the preload thread and a job may ask at the same time."""
        self.last_used[kind] = time.monotonic()
        if kind in self.adapters:
            return self.adapters[kind]
        with self._loading:
            if kind not in self.adapters:
                self._load(kind)
        return self.adapters[kind]

    def _load(self, kind: str) -> None:
        spec = self.spec(kind)
        started = time.perf_counter()
        adapter = create_adapter(spec, data_dir=self.data_dir, allow_unpinned=self.allow_unpinned)
        adapter.load(pick_device(spec.device))
        load_s = time.perf_counter() - started
        self.call_costs[kind] = call_cost_tokens(adapter)
        self.adapters[kind] = adapter
        self.footprints[kind] = adapter.footprint_bytes()
        metrics.MODEL_LOAD.labels(kind, spec.model).set(load_s)
        log.info(
            "loaded %s model %s on %s in %.2fs (%.0f MiB)",
            kind, spec.model, adapter.device, load_s, self.footprints[kind] / 2**20,
        )  # fmt: skip
        self._keep_to_budget(keep=kind)
        metrics.record_process_memory()

    def _keep_to_budget(self, *, keep: str) -> None:
        """Unload least-recently-used models until the loaded ones fit the budget (the one
        just needed always stays, even alone over it)."""
        if not self.memory_budget_bytes:
            return
        while sum(self.footprints.values()) > self.memory_budget_bytes and len(self.adapters) > 1:
            oldest = min((k for k in self.adapters if k != keep), key=lambda k: self.last_used.get(k, 0.0))
            unloaded = self.adapters.pop(oldest)
            freed = self.footprints.pop(oldest)
            del unloaded
            release_memory()
            log.info("unloaded %s model (%.0f MiB) to stay within the memory budget", oldest, freed / 2**20)
