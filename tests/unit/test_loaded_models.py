"""The worker's model cache under threads: the preload thread and jobs ask for models at once."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from jobs.modelsfile import load_models_file
from workers.loaded import LoadedModels

KINDS = ("text-generation", "chat", "text2text-generation", "text-classification")


def ask_at_once(models: LoadedModels, kinds: tuple[str, ...]) -> tuple[list[str], dict[str, list[Any]]]:
    """Each kind asked for on two threads at once; what failed, and what each thread got."""
    errors: list[str] = []
    got: dict[str, list[Any]] = {kind: [] for kind in kinds}

    def get(kind: str) -> None:
        try:
            got[kind].append(models.get(kind))
        except Exception as exc:  # what a job would have failed with
            errors.append(f"{kind}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=get, args=(kind,)) for kind in kinds for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    return errors, got


def test_models_asked_for_on_several_threads_at_once_all_load(data_dir: Path) -> None:
    """Two kinds' from_pretrained on two threads broke one of them ("Cannot copy out of meta
    tensor", or a half-imported transformers): loads take turns."""
    for _ in range(2):
        models = LoadedModels(models=load_models_file("demo"), data_dir=data_dir)
        errors, got = ask_at_once(models, KINDS)
        assert errors == []
        assert sorted(models.adapters) == sorted(KINDS)
        assert all(a is models.adapters[kind] for kind in KINDS for a in got[kind])  # each kind loaded once
