"""speech-recognition: CTC models (wav2vec2 family) and Whisper, with long audio cut into windows.

Audio longer than one window (``options.chunk_s``, 30 s by default, at most 30 s
for Whisper) is cut into windows that overlap by ``options.overlap_s``; nothing
is truncated. CTC windows keep their frames up to the middle of each overlap;
Whisper windows are joined where their token sequences agree.
"""

from __future__ import annotations

import difflib
import itertools
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from jobs.errors import InvalidInput, ModelNotConfigured
from jobs.kinds import SpeechRecognitionInput, SpeechRecognitionOutput
from jobs.modelsfile import ModelSpec
from jobs.schemas import binary_limit
from models.audio import decode_audio
from models.base import Adapter, Prediction, StopSignal
from models.loading import torch_dtype

MAX_INPUT_BYTES = 25_000_000  # 26 min of 128 kbit/s MP3, 2.4 min of CD-quality WAV
CHUNK_S = 30.0  # Whisper's receptive field; wav2vec2 models are trained on shorter clips but cope
OVERLAP_S = 2.0  # context on each side of a cut; the overlap is decoded twice
MAX_WINDOWS = 16  # windows in one forward pass: 16 x 30 s of 16 kHz float32 is 31 MB of input
MIN_WINDOW_S = 0.1  # wav2vec2's convolutions need 25 ms; shorter windows are padded with silence
MIN_MATCH_TOKENS = 2  # Whisper windows are joined on a common run at least this long


@dataclass(frozen=True)
class Clip:
    """One prepared job: mono samples at the model's rate, and what to do with them."""

    samples: np.ndarray
    language: str | None
    task: str


@dataclass(frozen=True)
class Window:
    """Samples ``start:end`` of clip ``clip``; output for ``keep_from:keep_to`` (relative) is kept."""

    clip: int
    start: int
    end: int
    keep_from: int
    keep_to: int


def split(clips: list[Clip], *, window: int, overlap: int) -> list[Window]:
    """Every clip cut into windows of ``window`` samples overlapping by ``overlap``; in clip order."""
    windows = []
    for index, clip in enumerate(clips):
        total = len(clip.samples)
        starts = range(0, max(total - overlap, 1), window - overlap)  # the last window reaches the end
        for n, start in enumerate(starts):
            end = min(start + window, total)
            keep_from = overlap // 2 if n > 0 else 0
            keep_to = end - start - (overlap - overlap // 2 if n < len(starts) - 1 else 0)
            windows.append(Window(index, start, end, keep_from, keep_to))
    return windows


def count_windows(windows: list[Window], clip: int) -> int:
    return sum(1 for w in windows if w.clip == clip)


def sub_batches(windows: list[Window], *, size: int, same_length: bool) -> list[list[Window]]:
    """Groups of at most ``size`` windows, longest first; with ``same_length``, no padding at all."""
    ordered = sorted(windows, key=lambda w: w.end - w.start, reverse=True)
    groups = (
        [list(g) for _, g in itertools.groupby(ordered, key=lambda w: w.end - w.start)] if same_length else [ordered]
    )
    return [group[i : i + size] for group in groups for i in range(0, len(group), size)]


def join_tokens(left: list[int], right: list[int]) -> list[int]:
    """Two overlapping windows' tokens as one sequence, cut inside their longest common run."""
    tail, head = left[-64:], right[:64]
    match = difflib.SequenceMatcher(None, tail, head, autojunk=False).find_longest_match(0, len(tail), 0, len(head))
    if match.size < MIN_MATCH_TOKENS:
        return left + right
    return left[: len(left) - len(tail) + match.a + match.size] + right[match.b + match.size :]


class Recognizer(ABC):
    """A model family's way from windows of samples to text."""

    max_window_s: ClassVar[float | None] = None

    def __init__(self, processor: Any, model: Any, *, device: str, max_windows: int) -> None:
        self.processor = processor
        self.model = model
        self.device = device
        self.max_windows = max_windows
        self.sampling_rate_hz = int(processor.feature_extractor.sampling_rate)
        # without an attention mask, padding changes the output: then only equal windows share a pass
        self.same_length = not processor.feature_extractor.return_attention_mask

    @abstractmethod
    def check(self, *, language: str | None, task: str) -> str | None:
        """The language to pass on, normalized; InvalidInput for a request the model cannot serve."""

    @abstractmethod
    def transcribe(self, clips: list[Clip], windows: list[Window]) -> list[str]:
        """One text per clip, from all of its windows."""

    def features(self, clips: list[Clip], group: list[Window], **kwargs: Any) -> Any:
        """The processor's padded tensors for ``group``, on the model's device and dtype."""
        import torch

        min_samples = int(MIN_WINDOW_S * self.sampling_rate_hz)
        audio = [clips[w.clip].samples[w.start : w.end] for w in group]
        audio = [np.pad(a, (0, max(0, min_samples - len(a)))) for a in audio]
        encoded = self.processor(audio=audio, sampling_rate=self.sampling_rate_hz, return_tensors="pt", **kwargs)
        return {
            key: value.to(self.device, dtype=self.model.dtype) if value.is_floating_point() else value.to(self.device)
            for key, value in encoded.items()
            if isinstance(value, torch.Tensor)
        }


class CtcRecognizer(Recognizer):
    """wav2vec2 and kin: a token per 20 ms frame, argmax, repeats and blanks collapsed by the tokenizer."""

    def check(self, *, language: str | None, task: str) -> str | None:
        if task == "translate":
            raise InvalidInput("this deployment's speech model (CTC) only transcribes; use task=transcribe")
        return None  # a CTC model knows one language (or a fixed set) and takes no hint

    def transcribe(self, clips: list[Clip], windows: list[Window]) -> list[str]:
        import torch

        frames: dict[Window, np.ndarray] = {}
        for group in sub_batches(windows, size=self.max_windows, same_length=self.same_length):
            inputs = self.features(clips, group, padding=True)
            with torch.inference_mode():
                ids = self.model(**inputs).logits.argmax(dim=-1).cpu().numpy()
            frames_per_sample = ids.shape[1] / inputs["input_values"].shape[1]
            for w, row in zip(group, ids, strict=True):
                frames[w] = row[round(w.keep_from * frames_per_sample) : round(w.keep_to * frames_per_sample)]
        per_clip = [np.concatenate([frames[w] for w in windows if w.clip == i]) for i in range(len(clips))]
        return [
            text.strip()
            for text in self.processor.batch_decode([ids.tolist() for ids in per_clip], skip_special_tokens=True)
        ]


class WhisperRecognizer(Recognizer):
    """Whisper: each 30 s window decoded with ``generate``; language and task as asked."""

    max_window_s = 30.0  # the encoder sees exactly 30 s (shorter input is padded)

    def check(self, *, language: str | None, task: str) -> str | None:
        from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE

        lang_to_id = getattr(self.model.generation_config, "lang_to_id", None) or {}
        if not lang_to_id:  # an English-only checkpoint (*.en)
            if task == "translate" or (language or "en").lower() not in ("en", "english"):
                raise InvalidInput("this deployment's Whisper model is English-only: leave language unset (or en)")
            return None
        if language is None:
            return None  # Whisper detects it
        code = language.strip("<|>").lower()
        code = TO_LANGUAGE_CODE.get(code, code)
        if f"<|{code}|>" not in lang_to_id:
            raise InvalidInput(f"language {language!r} is unknown to this model; give a code such as zh or en")
        return code

    def transcribe(self, clips: list[Clip], windows: list[Window]) -> list[str]:
        tokens: dict[Window, list[int]] = {}
        requests = sorted({(clip.language or "", clip.task) for clip in clips})
        for language, task in requests:
            wanted = [w for w in windows if (clips[w.clip].language or "", clips[w.clip].task) == (language, task)]
            for group in sub_batches(wanted, size=self.max_windows, same_length=False):  # all 30 s
                tokens.update(
                    zip(group, self.generate(clips, group, language=language or None, task=task), strict=True)
                )
        texts = []
        for i in range(len(clips)):
            joined: list[int] = []
            for w in (w for w in windows if w.clip == i):
                joined = join_tokens(joined, tokens[w])
            texts.append(self.processor.tokenizer.decode(joined, skip_special_tokens=True).strip())
        return texts

    def generate(self, clips: list[Clip], group: list[Window], *, language: str | None, task: str) -> list[list[int]]:
        import torch

        inputs = self.features(clips, group, return_attention_mask=True)
        kwargs: dict[str, Any] = {"return_timestamps": False}
        if getattr(self.model.generation_config, "lang_to_id", None):
            kwargs.update(language=language, task=task)
        with torch.inference_mode():
            sequences = self.model.generate(**inputs, **kwargs).cpu().tolist()
        special = set(self.processor.tokenizer.all_special_ids)
        return [[t for t in row if t not in special] for row in sequences]


RECOGNIZERS: dict[str, type[Recognizer]] = {"ctc": CtcRecognizer, "whisper": WhisperRecognizer}


def family(model_type: str) -> str:
    """Which recognizer serves a config's ``model_type``: ``ctc`` or ``whisper``."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CTC_MAPPING_NAMES

    if model_type == "whisper":
        return "whisper"
    if model_type in MODEL_FOR_CTC_MAPPING_NAMES:
        return "ctc"
    raise ModelNotConfigured(
        f"speech-recognition serves Whisper and CTC models (wav2vec2, HuBERT, WavLM...), not {model_type!r}"
    )


class SpeechRecognitionAdapter(Adapter[SpeechRecognitionInput, Clip]):
    kind = "speech-recognition"

    def __init__(self, spec: ModelSpec, **located: Any) -> None:
        super().__init__(spec, **located)
        self.chunk_s = float(spec.options.get("chunk_s", CHUNK_S))
        self.overlap_s = float(spec.options.get("overlap_s", OVERLAP_S))
        self.max_windows = int(spec.options.get("max_windows", MAX_WINDOWS))
        if not 0 <= 2 * self.overlap_s < self.chunk_s:
            raise ValueError(f"options: overlap_s={self.overlap_s} must be under half of chunk_s={self.chunk_s}")
        if self.max_windows < 1:
            raise ValueError(f"options: max_windows={self.max_windows} must be at least 1")
        self.max_audio_s = float(binary_limit(spec.limits, "max_audio_s"))
        self.max_input_bytes = int(spec.limits.get("max_input_bytes", MAX_INPUT_BYTES))

    def load_weights(self, device: str) -> None:
        from transformers import AutoConfig, AutoModelForCTC, AutoModelForSpeechSeq2Seq, AutoProcessor

        kwargs = self.pretrained_kwargs()
        config_kwargs = {k: v for k, v in kwargs.items() if k in ("revision", "local_files_only", "trust_remote_code")}
        config = AutoConfig.from_pretrained(self.source, **config_kwargs)
        name = family(config.model_type)
        auto_model = AutoModelForSpeechSeq2Seq if name == "whisper" else AutoModelForCTC
        processor = AutoProcessor.from_pretrained(self.source, **kwargs)
        model = auto_model.from_pretrained(
            self.source, config=config, dtype=torch_dtype(self.spec.dtype, device), **kwargs
        ).to(device)
        model.eval()
        self.recognizer = RECOGNIZERS[name](processor, model, device=device, max_windows=self.max_windows)
        limit = self.recognizer.max_window_s
        self.window_s = min(self.chunk_s, limit) if limit else self.chunk_s

    def prepare(self, item: SpeechRecognitionInput) -> Clip:
        language = self.recognizer.check(language=item.language, task=item.task)
        samples = decode_audio(
            item.audio.data,
            sampling_rate_hz=self.recognizer.sampling_rate_hz,
            max_duration_s=self.max_audio_s,
            max_bytes=self.max_input_bytes,
        )
        return Clip(samples=samples, language=language, task=item.task)

    def predict(self, batch: list[Clip], *, stop: StopSignal | None = None) -> list[Prediction]:
        rate = self.recognizer.sampling_rate_hz
        overlap = int(min(self.overlap_s, self.window_s / 4) * rate)
        windows = split(batch, window=int(self.window_s * rate), overlap=overlap)
        texts = self.recognizer.transcribe(batch, windows)
        return [
            Prediction(
                SpeechRecognitionOutput(
                    text=text,
                    duration_s=round(len(clip.samples) / rate, 3),
                    sampling_rate=rate,
                    chunks=count_windows(windows, i),
                )
            )
            for i, (clip, text) in enumerate(zip(batch, texts, strict=True))
        ]
