"""Which adapter serves which kind. A new kind is a new file and one line here.

Entries are import paths, so looking up the registry imports no model code
(and no torch) until a worker actually loads an adapter.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from jobs.modelsfile import ModelSpec
from models.base import Adapter
from models.loading import resolve_source

ADAPTERS: dict[str, str] = {
    "text-classification": "models.text_classification:TextClassificationAdapter",
    "embedding": "models.embedding:EmbeddingAdapter",
    "moderation": "models.moderation:ModerationAdapter",
    "text-generation": "models.text_generation:TextGenerationAdapter",
    "text2text-generation": "models.text2text:Text2TextAdapter",
    "chat": "models.chat:ChatAdapter",
    "speech-recognition": "models.speech_recognition:SpeechRecognitionAdapter",
    "image-classification": "models.image_classification:ImageClassificationAdapter",
    "image-generation": "models.image_generation:ImageGenerationAdapter",
    "music-generation": "models.music_generation:MusicGenerationAdapter",
    "recommendation": "models.recommendation:RecommendationAdapter",
}


def adapter_class(kind: str, *, path: str | None = None) -> type[Adapter[Any, Any]]:
    """The adapter class of ``kind``: mlq's, or the ``module:Class`` a models file names."""
    if path is None and kind not in ADAPTERS:
        raise KeyError(f"no adapter for kind {kind!r}; adapters exist for: {', '.join(ADAPTERS)}")
    path = path or ADAPTERS[kind]
    module_name, _, class_name = path.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, Adapter)) or cls.kind != kind:
        raise TypeError(f"{path} is not an Adapter for {kind!r}")
    return cls


def create_adapter(spec: ModelSpec, *, data_dir: Path, allow_unpinned: bool = False) -> Adapter[Any, Any]:
    """An adapter for ``spec`` with its weights located (builtin models are built now); a hub
    model loads only at a pinned commit unless ``allow_unpinned``."""

    def resolve(ref: str) -> str:
        return resolve_source(spec.model_copy(update={"model": ref, "revision": None}), data_dir=data_dir)

    cls = adapter_class(spec.kind, path=spec.adapter)
    return cls(spec, source=resolve_source(spec, data_dir=data_dir), resolve=resolve, allow_unpinned=allow_unpinned)
