"""An adapter a models file can name (``adapter = "module:Class"``, as the README allows): the
real image classifier, which also appends the pixel count of each model call's images to the
file its ``options.record_to`` names, so a test can see from outside how a worker cut its calls."""

from __future__ import annotations

import json
from typing import Any

from models.base import Prediction, StopSignal
from models.image_classification import ImageClassificationAdapter


class RecordingImageClassifier(ImageClassificationAdapter):
    def predict(self, batch: list[Any], *, stop: StopSignal | None = None) -> list[Prediction]:
        with open(self.spec.options["record_to"], "a", encoding="utf-8") as record:
            record.write(json.dumps([self.size(item) for item in batch]) + "\n")
        return super().predict(batch, stop=stop)
