"""music-generation: MusicGen turns a prompt into a WAV clip of the requested length.

Each item is generated on its own: its seed then fixes its audio whatever else
is in the batch (sampling draws from one random stream per ``generate`` call).
"""

from __future__ import annotations

import math
import secrets
from typing import Any

import numpy as np

from jobs.errors import InvalidInput
from jobs.kinds import GeneratedAudio, MusicGenerationInput, MusicGenerationOutput
from models.audio import encode_wav
from models.base import Adapter, Blob, Prediction, StopSignal
from models.loading import torch_dtype

ARTIFACT = "audio.wav"
CONTENT_TYPE = "audio/wav"


class MusicGenerationAdapter(Adapter[MusicGenerationInput, MusicGenerationInput]):
    kind = "music-generation"
    interruptible = True

    def load_weights(self, device: str) -> None:
        from transformers import AutoProcessor, MusicgenForConditionalGeneration

        kwargs = self.pretrained_kwargs()
        self.processor = AutoProcessor.from_pretrained(self.source, **kwargs)
        model: Any = MusicgenForConditionalGeneration.from_pretrained(
            self.source, dtype=torch_dtype(self.spec.dtype, device), **kwargs
        )
        self.model = model.to(device).eval()
        codec = self.model.config.audio_encoder
        self.sampling_rate_hz = int(codec.sampling_rate)
        self.frame_rate_hz = float(codec.frame_rate)
        decoder = self.model.config.decoder
        # codebooks are generated one step apart: the last frame lands this many steps after the first
        self.delay_steps = decoder.num_codebooks // decoder.audio_channels - 1
        self.max_steps = int(decoder.max_position_embeddings)

    def steps(self, duration_s: float) -> int:
        """Decoder steps (``max_new_tokens``) that yield at least ``duration_s`` of audio."""
        return max(1, math.ceil(duration_s * self.frame_rate_hz)) + self.delay_steps

    def prepare(self, item: MusicGenerationInput) -> MusicGenerationInput:
        if self.steps(item.duration_s) > self.max_steps:
            longest_s = (self.max_steps - self.delay_steps) / self.frame_rate_hz
            raise InvalidInput(
                f"duration_s={item.duration_s:g} is longer than this model generates ({longest_s:.0f} s)"
            )
        return item

    def predict(self, batch: list[MusicGenerationInput], *, stop: StopSignal | None = None) -> list[Prediction]:
        signal = stop or StopSignal()
        return [self.generate(item, stop=signal) for item in batch]

    def generate(self, item: MusicGenerationInput, *, stop: StopSignal) -> Prediction:
        import torch
        from transformers import StoppingCriteriaList

        from models.generation import StopOnSignal

        seed = item.seed if item.seed is not None else secrets.randbelow(2**32)
        inputs = self.processor(text=[item.prompt], padding=True, truncation=True, return_tensors="pt").to(self.device)
        with torch.random.fork_rng(devices=rng_devices(self.device)), torch.inference_mode():
            torch.manual_seed(seed)
            try:
                audio = self.model.generate(
                    **inputs,
                    do_sample=True,
                    guidance_scale=item.guidance_scale,
                    max_new_tokens=self.steps(item.duration_s),
                    stopping_criteria=StoppingCriteriaList([StopOnSignal(stop)]),
                )
            except RuntimeError:
                stop.check()  # MusicGen cannot undo its codebook delay on a clip cut short: say why it was
                raise
        stop.check()
        samples = fit(audio[0].float().cpu().numpy().T, frames=max(1, round(item.duration_s * self.sampling_rate_hz)))
        wav = encode_wav(samples, sampling_rate_hz=self.sampling_rate_hz)
        output = MusicGenerationOutput(
            audio=GeneratedAudio(
                artifact=ARTIFACT,
                content_type=CONTENT_TYPE,
                duration_s=len(samples) / self.sampling_rate_hz,
                sampling_rate=self.sampling_rate_hz,
            ),
            seed=seed,
        )
        return Prediction(output, blobs=[Blob(ARTIFACT, CONTENT_TYPE, wav)])


def rng_devices(device: str) -> list[int]:
    """The CUDA devices whose random state ``fork_rng`` must save and restore."""
    import torch

    if not device.startswith("cuda"):
        return []
    index = torch.device(device).index
    return [index if index is not None else torch.cuda.current_device()]


def fit(samples: np.ndarray, *, frames: int) -> np.ndarray:
    """``samples`` (frames x channels) cut or padded with silence to exactly ``frames``."""
    if len(samples) >= frames:
        return samples[:frames]
    return np.pad(samples, ((0, frames - len(samples)), (0, 0)))
