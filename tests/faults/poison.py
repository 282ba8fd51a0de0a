"""An embedding adapter that kills its process on the text "poison": a job that takes its
worker down every time, as a corrupt input can with native code."""

from __future__ import annotations

import os
from typing import Any

from models.base import Prediction, StopSignal
from models.embedding import EmbeddingAdapter
from models.tokens import Tokenized


def texts(batch: list[Tokenized]) -> list[str]:
    """The texts of a batch of prepared (tokenized) embedding inputs."""
    return [prepared.item.text for prepared in batch]


POISON = "poison"


class PoisonEmbedding(EmbeddingAdapter):
    def predict(self, batch: list[Any], *, stop: StopSignal | None = None) -> list[Prediction]:
        if POISON in texts(batch):
            os._exit(1)  # like a segfault: no exception, no cleanup
        return super().predict(batch, stop=stop)


HANG = "hang"


class HangingEmbedding(EmbeddingAdapter):
    """Never returns on the text "hang", like a generation stuck in native code."""

    def predict(self, batch: list[Any], *, stop: StopSignal | None = None) -> list[Prediction]:
        if HANG in texts(batch):
            import time

            time.sleep(3600)
        return super().predict(batch, stop=stop)


GPU_CRASH = "gpu-crash"


class BrokenDeviceEmbedding(EmbeddingAdapter):
    """Raises what CUDA raises after an illegal memory access, on the text "gpu-crash"."""

    def predict(self, batch: list[Any], *, stop: StopSignal | None = None) -> list[Prediction]:
        if GPU_CRASH in texts(batch):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return super().predict(batch, stop=stop)


SLOW_START_S = 8.0  # more than a fault stack's lease (3 s) and a reconciler round, with room


class SlowStartEmbedding(EmbeddingAdapter):
    """Loads SLOW_START_S slower, as a large model does: a pool process that replaces a killed
    one takes its first message only after the reconciler has taken back the dead one's jobs."""

    def load(self, device: str) -> None:
        import time

        time.sleep(SLOW_START_S)
        super().load(device)
