"""moderation: text (or an image) to ``flagged`` plus per-category scores.

Text: zero-shot against category descriptions from the models file — a
category's score is the highest cosine similarity between the text's embedding
and its descriptions (clipped to 0..1), flagged at the category's threshold.
Images: an image-classification model (``options.image_model``) whose labels
map to categories (``options.image_labels``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jobs.errors import ModelNotConfigured
from jobs.kinds import ImageClassificationInput, ModerationInput, ModerationOutput
from jobs.modelsfile import ModelSpec
from models.base import Adapter, Prediction, StopSignal
from models.embedding import EmbeddingAdapter

if TYPE_CHECKING:
    from models.image_classification import PreparedImage  # imported when an image model is configured

DEFAULT_THRESHOLD = 0.4  # all-MiniLM-L6-v2: unrelated English text scores below 0.3 here
DEFAULT_CATEGORIES: dict[str, list[str]] = {
    "violence": ["a threat to hurt, attack or kill someone", "I will beat you up", "I am going to hurt you"],
    "hate": [
        "hateful insults against people because of their race, religion or origin",
        "those people are vermin and should be wiped out",
    ],
    "harassment": ["insulting or bullying someone personally", "you are stupid and worthless, nobody likes you"],
    "sexual": ["sexually explicit content", "explicit description of sex acts"],
    "self-harm": ["wanting to hurt or kill oneself", "I want to end my life"],
    "spam": ["advertising spam with links and promotions", "buy now, limited offer, click this link"],
}


class ModerationAdapter(Adapter[ModerationInput, "ModerationInput | PreparedImage"]):
    kind = "moderation"

    def load_weights(self, device: str) -> None:
        options = self.spec.options
        self.categories: dict[str, list[str]] = {
            name: [d] if isinstance(d, str) else list(d)
            for name, d in options.get("categories", DEFAULT_CATEGORIES).items()
        }
        default = float(options.get("threshold", DEFAULT_THRESHOLD))
        self.thresholds = {c: float(options.get("thresholds", {}).get(c, default)) for c in self.categories}
        self.encoder = EmbeddingAdapter(
            ModelSpec(kind="embedding", model=self.spec.model, revision=self.spec.revision, dtype=self.spec.dtype),
            source=self.source,
        )
        self.encoder.load(device)
        descriptions = [d for ds in self.categories.values() for d in ds]
        self.description_vectors = self.encoder.embed(descriptions)
        self.owner = [name for name, ds in self.categories.items() for _ in ds]
        self.images = self._load_image_model(device)

    def _load_image_model(self, device: str) -> Any:
        ref = self.spec.options.get("image_model")
        if not ref:
            return None
        from models.image_classification import ImageClassificationAdapter

        labels = self.spec.options.get("image_labels", {})
        unknown = set(labels.values()) - set(self.categories)
        if unknown:
            raise ModelNotConfigured(f"image_labels map to unknown categories {sorted(unknown)}")
        spec = ModelSpec(
            kind="image-classification", model=ref, revision=self.spec.options.get("image_model_revision"),
            device=self.spec.device, limits=self.spec.limits,
        )  # fmt: skip
        classifier = ImageClassificationAdapter(spec, source=self.resolve(ref), allow_unpinned=self.allow_unpinned)
        classifier.load(device)
        return classifier

    def prepare(self, item: ModerationInput) -> ModerationInput | PreparedImage:
        if item.image is None:
            return item
        if self.images is None:
            from jobs.errors import InvalidInput

            raise InvalidInput("image moderation is not configured here: the models file has no image_model")
        return self.images.prepare(ImageClassificationInput(image=item.image, top_k=1000))

    def predict(
        self, batch: list[ModerationInput | PreparedImage], *, stop: StopSignal | None = None
    ) -> list[Prediction]:
        texts = [(i, item.text or "") for i, item in enumerate(batch) if isinstance(item, ModerationInput)]
        results: list[dict[str, float]] = [{} for _ in batch]
        if texts:
            similarities = self.encoder.embed([t for _, t in texts]) @ self.description_vectors.T
            for (i, _), row in zip(texts, similarities.tolist(), strict=True):
                for name, value in zip(self.owner, row, strict=True):
                    results[i][name] = max(results[i].get(name, 0.0), min(1.0, max(0.0, value)))
        pictures = [(i, item) for i, item in enumerate(batch) if not isinstance(item, ModerationInput)]
        if pictures:
            labels = self.spec.options.get("image_labels", {})
            for (i, _), prediction in zip(pictures, self.images.predict([p for _, p in pictures]), strict=True):
                for entry in prediction.output.labels:
                    if entry.label in labels:
                        name = labels[entry.label]
                        results[i][name] = max(results[i].get(name, 0.0), entry.score)
        return [Prediction(self._verdict(scores)) for scores in results]

    def _verdict(self, scores: dict[str, float]) -> ModerationOutput:
        scores = {name: round(scores.get(name, 0.0), 6) for name in self.categories}
        flags = {name: scores[name] >= self.thresholds[name] for name in self.categories}
        return ModerationOutput(
            flagged=any(flags.values()),
            flagged_categories=[name for name, flag in flags.items() if flag],
            categories=flags,
            category_scores=scores,
        )
