"""text-classification: a sequence classifier (AutoModelForSequenceClassification)."""

from __future__ import annotations

from jobs.kinds import LabelScore, TextClassificationInput, TextClassificationOutput
from models.base import Adapter, Prediction, StopSignal
from models.loading import torch_dtype
from models.tokens import Tokenized, padded, tokenized, tokenized_many

MAX_TOKENS = 512  # longer texts are truncated; max_text_chars in the models file bounds them first


class TextClassificationAdapter(Adapter[TextClassificationInput, Tokenized]):
    kind = "text-classification"
    budget_unit = "tokens"

    def load_weights(self, device: str) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        kwargs = self.pretrained_kwargs()
        self.tokenizer = AutoTokenizer.from_pretrained(self.source, **kwargs)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            self.source, dtype=torch_dtype(self.spec.dtype, device), **kwargs
        ).to(device)
        self.model.eval()
        self.multi_label = self.model.config.problem_type == "multi_label_classification"
        self.labels = [self.model.config.id2label[i] for i in range(self.model.config.num_labels)]

    def prepare(self, item: TextClassificationInput) -> Tokenized:
        return tokenized(self.tokenizer, item, max_tokens=MAX_TOKENS)

    def prepare_many(self, items: list[TextClassificationInput]) -> list[Tokenized]:
        return tokenized_many(self.tokenizer, items, max_tokens=MAX_TOKENS)

    def size(self, prepared: Tokenized) -> int:
        """Tokens the text takes in a batch (after truncation)."""
        return len(prepared.ids)

    def predict(self, batch: list[Tokenized], *, stop: StopSignal | None = None) -> list[Prediction]:
        import torch

        with torch.inference_mode():
            logits = self.model(**padded(self.tokenizer, batch, device=self.device)).logits.float()
        scores = logits.sigmoid() if self.multi_label else logits.softmax(dim=-1)
        return [self._prediction(row.tolist(), p.item.top_k) for row, p in zip(scores, batch, strict=True)]

    def _prediction(self, scores: list[float], top_k: int | None) -> Prediction:
        ranked = sorted(zip(self.labels, scores, strict=True), key=lambda pair: pair[1], reverse=True)
        labels = [LabelScore(label=label, score=score) for label, score in ranked[: top_k or len(ranked)]]
        return Prediction(TextClassificationOutput(label=labels[0].label, score=labels[0].score, labels=labels))
