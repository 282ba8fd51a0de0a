"""image-classification: an image classifier (AutoImageProcessor + AutoModelForImageClassification)."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from jobs.kinds import ImageClassificationInput, ImageClassificationOutput, LabelScore
from jobs.schemas import binary_limit
from models.base import Adapter, Prediction, StopSignal
from models.images import decode_image
from models.loading import torch_dtype


@dataclass(frozen=True)
class PreparedImage:
    image: Image.Image
    top_k: int


class ImageClassificationAdapter(Adapter[ImageClassificationInput, PreparedImage]):
    kind = "image-classification"
    budget_unit = "pixels"  # decoded images are held whole until the processor resizes them

    def load_weights(self, device: str) -> None:
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        kwargs = self.pretrained_kwargs()
        self.processor = AutoImageProcessor.from_pretrained(self.source, **kwargs)
        self.model = AutoModelForImageClassification.from_pretrained(
            self.source, dtype=torch_dtype(self.spec.dtype, device), **kwargs
        ).to(device)
        self.model.eval()
        self.multi_label = self.model.config.problem_type == "multi_label_classification"
        self.labels = [self.model.config.id2label[i] for i in range(self.model.config.num_labels)]

    def prepare(self, item: ImageClassificationInput) -> PreparedImage:
        image = decode_image(
            item.image.data,
            max_pixels=binary_limit(self.spec.limits, "max_image_pixels"),
            max_bytes=binary_limit(self.spec.limits, "max_input_bytes"),
        )
        return PreparedImage(image=image, top_k=item.top_k)

    def size(self, prepared: PreparedImage) -> int:
        width, height = prepared.image.size
        return int(width * height)

    def classify(self, images: list[Image.Image]) -> list[dict[str, float]]:
        """Label → score for each decoded RGB image, in one batch (scores are softmax or sigmoid)."""
        import torch

        inputs = self.processor(images=images, return_tensors="pt")
        pixel_values = inputs["pixel_values"].to(self.device, dtype=self.model.dtype)
        with torch.inference_mode():
            logits = self.model(pixel_values=pixel_values).logits.float()
        scores = logits.sigmoid() if self.multi_label else logits.softmax(dim=-1)
        return [dict(zip(self.labels, row.tolist(), strict=True)) for row in scores.cpu()]

    def predict(self, batch: list[PreparedImage], *, stop: StopSignal | None = None) -> list[Prediction]:
        scored = self.classify([item.image for item in batch])
        return [self._prediction(scores, item.top_k) for scores, item in zip(scored, batch, strict=True)]

    def _prediction(self, scores: dict[str, float], top_k: int) -> Prediction:
        ranked = sorted(scores.items(), key=lambda pair: pair[1], reverse=True)[:top_k]
        labels = [LabelScore(label=label, score=score) for label, score in ranked]
        return Prediction(ImageClassificationOutput(label=labels[0].label, score=labels[0].score, labels=labels))
