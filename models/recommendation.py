"""recommendation: rank candidate items for a user profile by embedding similarity.

The user is the mean of the embeddings of their stated interests and recent
behaviour; each item is its text's embedding. Item embeddings are cached
(least recently used, keyed by a digest of the text), so re-ranking the same
catalogue for the next user embeds only the user.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any

from jobs.kinds import RecommendationInput, RecommendationOutput, ScoredItem
from jobs.modelsfile import ModelSpec
from models.base import Adapter, Prediction, StopSignal
from models.embedding import EmbeddingAdapter

DEFAULT_CACHE_ITEMS = 100_000  # 384 floats each: about 150 MB at most


def text_key(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


class ItemCache:
    """Least-recently-used item embeddings (CPU tensors), bounded by count."""

    def __init__(self, *, max_items: int) -> None:
        self.max_items = max_items
        self.vectors: OrderedDict[bytes, Any] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: bytes) -> Any | None:
        vector = self.vectors.get(key)
        if vector is None:
            self.misses += 1
            return None
        self.hits += 1
        self.vectors.move_to_end(key)
        return vector

    def put(self, key: bytes, vector: Any) -> None:
        self.vectors[key] = vector
        self.vectors.move_to_end(key)
        while len(self.vectors) > self.max_items:
            self.vectors.popitem(last=False)


class RecommendationAdapter(Adapter[RecommendationInput, RecommendationInput]):
    kind = "recommendation"

    def load_weights(self, device: str) -> None:
        encoder_spec = ModelSpec(
            kind="embedding",
            model=self.spec.model,
            revision=self.spec.revision,
            dtype=self.spec.dtype,
            device=self.spec.device,
        )
        self.encoder = EmbeddingAdapter(encoder_spec, source=self.source)
        self.encoder.load(device)
        self.cache = ItemCache(max_items=int(self.spec.options.get("item_cache_items", DEFAULT_CACHE_ITEMS)))
        self.chunk = self.spec.max_batch_size

    def item_vectors(self, texts: list[str]) -> list[Any]:
        """Embeddings of item texts, embedding only those not cached (each once)."""
        keys = [text_key(t) for t in texts]
        found = {k: v for k in set(keys) if (v := self.cache.get(k)) is not None}
        missing = list({k: t for k, t in zip(keys, texts, strict=True) if k not in found}.items())
        for start in range(0, len(missing), self.chunk):
            part = missing[start : start + self.chunk]
            for (key, _), vector in zip(part, self.encoder.embed([t for _, t in part]), strict=True):
                self.cache.put(key, vector)
                found[key] = vector
        return [found[k] for k in keys]

    def predict(self, batch: list[RecommendationInput], *, stop: StopSignal | None = None) -> list[Prediction]:
        import torch

        lines = [item.user.interests + item.user.recent for item in batch]
        flat = [line for group in lines for line in group]
        line_vectors = [self.encoder.embed(flat[s : s + self.chunk]) for s in range(0, len(flat), self.chunk)]
        all_lines = torch.cat(line_vectors) if line_vectors else torch.empty(0)
        predictions, offset = [], 0
        for item, group in zip(batch, lines, strict=True):
            user = torch.nn.functional.normalize(all_lines[offset : offset + len(group)].mean(dim=0), dim=0)
            offset += len(group)
            candidates = torch.stack(self.item_vectors([c.text for c in item.items]))
            scores = (candidates @ user).tolist()
            ranked = sorted(zip(item.items, scores, strict=True), key=lambda pair: pair[1], reverse=True)
            predictions.append(
                Prediction(RecommendationOutput(items=[ScoredItem(id=c.id, score=s) for c, s in ranked[: item.top_k]]))
            )
        return predictions
