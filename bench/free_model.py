"""A text classifier that costs nothing, for ``python -m bench pipeline``'s ``*-free`` modes.

It loads no weights and answers every text with the same label, built afresh per item as a
real adapter builds its outputs: with it, what a run costs is mlq's own work around a model
(validation, claims, result writes, the API), which is what is left on a GPU where a small
model costs next to nothing. A worker loads it through the models file's ``adapter`` key."""

from __future__ import annotations

from pathlib import Path

from jobs.kinds import LabelScore, TextClassificationInput, TextClassificationOutput
from models.base import Adapter, Prediction, StopSignal

KIND = "text-classification"


class FreeClassifier(Adapter[TextClassificationInput, TextClassificationInput]):
    kind = KIND

    def load_weights(self, device: str) -> None:
        """Nothing to load."""

    def predict(self, batch: list[TextClassificationInput], *, stop: StopSignal | None = None) -> list[Prediction]:
        return [
            Prediction(TextClassificationOutput(label="free", score=1.0, labels=[LabelScore(label="free", score=1.0)]))
            for _ in batch
        ]


def models_file(folder: Path) -> Path:
    """A models file serving ``KIND`` with this adapter (the demo profile's other settings)."""
    path = folder / "free-models.toml"
    path.write_text(
        f'profile = "bench-free"\n\n[kinds.{KIND}]\nmodel = "builtin:tiny-text-classifier"\n'
        f'adapter = "bench.free_model:FreeClassifier"\n',
        encoding="utf-8",
    )
    return path
