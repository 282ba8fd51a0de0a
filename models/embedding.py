"""embedding: mean-pooled sentence embeddings from an encoder (AutoModel)."""

from __future__ import annotations

from typing import Any

from jobs.kinds import EmbeddingInput, EmbeddingOutput
from models.base import Adapter, Prediction, StopSignal
from models.loading import torch_dtype
from models.tokens import Tokenized, padded, tokenized, tokenized_many

MAX_TOKENS = 256  # all-MiniLM-L6-v2 was trained on 256 tokens; longer input is truncated


class EmbeddingAdapter(Adapter[EmbeddingInput, Tokenized]):
    kind = "embedding"
    budget_unit = "tokens"

    def load_weights(self, device: str) -> None:
        from transformers import AutoModel, AutoTokenizer

        kwargs = self.pretrained_kwargs()
        self.tokenizer = AutoTokenizer.from_pretrained(self.source, **kwargs)
        self.model = AutoModel.from_pretrained(self.source, dtype=torch_dtype(self.spec.dtype, device), **kwargs).to(
            device
        )
        self.model.eval()

    def embed(self, texts: list[str], *, normalize: bool = True) -> Any:
        """Mean-pooled embeddings (a float32 tensor on the CPU), one row per text."""
        encoded = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=min(MAX_TOKENS, self.tokenizer.model_max_length),
            return_tensors="pt",
        ).to(self.device)
        return self._pooled(encoded, normalize=normalize)

    def _pooled(self, encoded: Any, *, normalize: bool) -> Any:
        import torch

        with torch.inference_mode():
            hidden = self.model(**encoded).last_hidden_state
            mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = ((hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)).float()
            if normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled.cpu()

    def prepare(self, item: EmbeddingInput) -> Tokenized:
        return tokenized(self.tokenizer, item, max_tokens=MAX_TOKENS)

    def prepare_many(self, items: list[EmbeddingInput]) -> list[Tokenized]:
        return tokenized_many(self.tokenizer, items, max_tokens=MAX_TOKENS)

    def size(self, prepared: Tokenized) -> int:
        """Tokens the text takes in a batch (after truncation)."""
        return len(prepared.ids)

    def predict(self, batch: list[Tokenized], *, stop: StopSignal | None = None) -> list[Prediction]:
        vectors = self._pooled(padded(self.tokenizer, batch, device=self.device), normalize=False)
        predictions = []
        for vector, one in zip(vectors, batch, strict=True):
            if one.item.normalize:
                vector = vector / vector.norm().clamp(min=1e-12)
            values = vector.tolist()
            output = EmbeddingOutput(embedding=values, dimensions=len(values), tokens=len(one.ids))
            predictions.append(Prediction(output))
        return predictions
