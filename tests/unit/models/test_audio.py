"""Audio decoding limits, window stitching, and the tiny wav2vec2, Whisper and MusicGen adapters on the CPU."""

from __future__ import annotations

import io
import itertools
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from jobs.errors import Cancelled, InvalidInput
from jobs.kinds import MusicGenerationInput, MusicGenerationOutput, SpeechRecognitionInput, SpeechRecognitionOutput
from jobs.modelsfile import ModelSpec
from jobs.schemas import BinaryInput
from models.audio import decode_audio, encode_wav
from models.base import StopSignal
from models.music_generation import MusicGenerationAdapter
from models.speech_recognition import Clip, SpeechRecognitionAdapter, join_tokens, split
from models.tiny import ensure_built

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
SPOKEN = ["speech.wav", "speech.flac", "speech.mp3", "speech-stereo-44k.ogg"]
SPOKEN_S = 41922 / 22050  # espeak-ng's 1.90 s
RATE_HZ = 16_000


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def decode(data: bytes, *, max_duration_s: float = 600, max_bytes: int = 25_000_000) -> np.ndarray:
    return decode_audio(data, sampling_rate_hz=RATE_HZ, max_duration_s=max_duration_s, max_bytes=max_bytes)


def flac_claiming(total_frames: int) -> bytes:
    """The FLAC fixture with STREAMINFO's 36-bit total-samples field set to ``total_frames``."""
    data = bytearray(fixture("speech.flac"))
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # STREAMINFO is the first metadata block
    packed = int.from_bytes(data[18:26], "big")  # rate (20 bits), channels, bits per sample, total (36 bits)
    data[18:26] = ((packed & ~((1 << 36) - 1)) | total_frames).to_bytes(8, "big")
    return bytes(data)


def wav_claiming_hours() -> bytes:
    """A well-formed 8-bit WAV of 8000 samples at 1 Hz: 2.2 hours by its header, 8 kB on the wire."""
    fmt = struct.pack("<HHIIHH", 1, 1, 1, 1, 1, 8)  # PCM, mono, 1 Hz, 1 byte/s, block 1, 8 bits
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", 8000) + bytes(8000)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def encoded(samples: np.ndarray, *, rate_hz: int, audio_format: str = "WAV") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate_hz, format=audio_format)
    return buffer.getvalue()


def speech_input(data: bytes, **fields: Any) -> SpeechRecognitionInput:
    audio = BinaryInput(base64="x")
    audio.resolve(data)
    return SpeechRecognitionInput(audio=audio, **fields)


def noise_wav(duration_s: float) -> bytes:
    samples = 0.1 * np.random.default_rng(0).standard_normal(int(duration_s * RATE_HZ)).astype(np.float32)
    return encode_wav(samples, sampling_rate_hz=RATE_HZ)


# --- decoding ------------------------------------------------------------


@pytest.mark.parametrize("name", SPOKEN)
def test_every_format_decodes_to_the_same_mono_speech_at_16k(name: str) -> None:
    reference = decode(fixture("speech.wav"))
    samples = decode(fixture(name))
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert len(samples) / RATE_HZ == pytest.approx(SPOKEN_S, abs=0.01)
    assert np.corrcoef(reference, samples[: len(reference)])[0, 1] > 0.99  # the same words, aligned


def test_channels_are_averaged_and_rates_converted() -> None:
    t = np.arange(44_100) / 44_100
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    stereo = np.stack([tone, np.zeros_like(tone)], axis=1)
    samples = decode(encoded(stereo, rate_hz=44_100, audio_format="FLAC"))
    assert len(samples) == RATE_HZ
    spectrum = np.abs(np.fft.rfft(samples))
    assert np.argmax(spectrum) == 440  # 1 s of audio: bin n is n Hz
    assert np.abs(samples).max() == pytest.approx(0.25, abs=0.01)  # (tone + silence) / 2


@pytest.fixture
def no_sample_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a sample is decoded (opening the file to read its header is allowed)."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("samples were decoded before the limits were checked")

    for name in ("read", "blocks", "buffer_read"):
        monkeypatch.setattr(sf.SoundFile, name, refuse)
    monkeypatch.setattr(sf, "read", refuse)


@pytest.mark.usefixtures("no_sample_decoding")
@pytest.mark.parametrize(
    ("data", "claimed_s"),
    [(flac_claiming(22_050 * 3600 * 5), 18_000), (wav_claiming_hours(), 8_000)],
    ids=["flac-5h", "wav-1hz"],
)
def test_a_header_claiming_hours_is_refused_before_decoding(data: bytes, claimed_s: int) -> None:
    with pytest.raises(InvalidInput, match=rf"{claimed_s}\.0 s long.*max_audio_s=600"):
        decode(data)


@pytest.mark.usefixtures("no_sample_decoding")
def test_size_and_duration_limits_name_the_limit() -> None:
    with pytest.raises(InvalidInput, match="max_input_bytes=1000"):
        decode(fixture("speech.wav"), max_bytes=1000)
    with pytest.raises(InvalidInput, match="max_audio_s=1"):
        decode(fixture("speech.wav"), max_duration_s=1)
    with pytest.raises(InvalidInput, match="does not state its length"):
        decode(flac_claiming(0))  # a streamed FLAC: total samples unknown


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not audio at all " * 100,
        fixture("speech.wav")[:44],  # a header and no samples
        fixture("speech.flac")[:20_000],  # truncated mid-stream
        flac_claiming(22_050 * 60),  # claims a minute, holds two seconds
    ],
    ids=["empty", "garbage", "header-only", "truncated", "lying-header"],
)
def test_bad_audio_is_invalid_input(data: bytes) -> None:
    with pytest.raises(InvalidInput):
        decode(data)


def test_odd_sampling_rates_are_refused_with_a_fix() -> None:
    with pytest.raises(InvalidInput, match="re-encode it at 16000"):
        decode(encoded(np.zeros(44_101, dtype=np.float32), rate_hz=44_101))  # 44101:16000 has no small ratio


def test_encode_wav_clips_instead_of_wrapping() -> None:
    loud = np.array([0.0, 0.5, 2.0, -3.0, np.nan], dtype=np.float32)
    samples, rate = sf.read(io.BytesIO(encode_wav(loud, sampling_rate_hz=8000)), dtype="float32")
    assert rate == 8000
    np.testing.assert_allclose(samples, [0.0, 0.5, 1.0, -1.0, 0.0], atol=1e-4)


# --- long audio ----------------------------------------------------------


@pytest.mark.parametrize("total", [1, 399, 30_000, 30_001, 70_000, 100_000])
def test_windows_cover_every_sample_once(total: int) -> None:
    clip = Clip(samples=np.zeros(total, dtype=np.float32), language=None, task="transcribe")
    windows = split([clip], window=30_000, overlap=2_000)
    kept = [(w.start + w.keep_from, w.start + w.keep_to) for w in windows]
    assert kept[0][0] == 0 and kept[-1][1] == total
    assert all(end == next_start for (_, end), (next_start, _) in itertools.pairwise(kept))
    assert all(w.end - w.start <= 30_000 for w in windows)


def test_overlapping_token_runs_are_joined_once() -> None:
    assert join_tokens([1, 2, 3, 4, 5], [4, 5, 6, 7]) == [1, 2, 3, 4, 5, 6, 7]
    assert join_tokens([1, 2, 3, 9], [2, 3, 4]) == [1, 2, 3, 4]  # a cut-off word on either side is dropped
    assert join_tokens([1, 2], [3, 4]) == [1, 2, 3, 4]
    assert join_tokens([], [3, 4]) == [3, 4]


# --- speech recognition --------------------------------------------------


def speech_adapter(source: Path, **options: Any) -> SpeechRecognitionAdapter:
    adapter = SpeechRecognitionAdapter(
        ModelSpec(kind="speech-recognition", model=str(source), options=options), source=str(source)
    )
    adapter.load("cpu")
    return adapter


@pytest.fixture(scope="module")
def wav2vec2(data_dir: Path) -> SpeechRecognitionAdapter:
    return speech_adapter(ensure_built("tiny-wav2vec2", data_dir=data_dir), chunk_s=30)


@pytest.fixture(scope="module")
def whisper(data_dir: Path) -> SpeechRecognitionAdapter:
    return speech_adapter(ensure_built("tiny-whisper", data_dir=data_dir), chunk_s=30)


def transcribe(adapter: SpeechRecognitionAdapter, inputs: list[SpeechRecognitionInput]) -> list[Any]:
    predictions = adapter.predict([adapter.prepare(item) for item in inputs])
    assert len(predictions) == len(inputs)
    return [SpeechRecognitionOutput.model_validate(p.output.model_dump()) for p in predictions]


def test_wav2vec2_transcribes_every_format_and_chunks_long_audio(wav2vec2: SpeechRecognitionAdapter) -> None:
    inputs = [speech_input(fixture(name)) for name in SPOKEN] + [speech_input(noise_wav(70))]
    *spoken, long = transcribe(wav2vec2, inputs)
    for out in spoken:
        assert out.text and out.chunks == 1 and out.sampling_rate == RATE_HZ
        assert out.duration_s == pytest.approx(SPOKEN_S, abs=0.01)
    assert spoken[0].text == spoken[1].text  # WAV and FLAC hold the same samples
    assert (long.chunks, long.duration_s) == (3, 70.0)  # 30 s windows overlapping by 2 s: 0, 28, 56
    [alone] = transcribe(wav2vec2, inputs[:1])
    assert alone.text == spoken[0].text  # what else is in the batch changes nothing


def test_ctc_models_refuse_to_translate(wav2vec2: SpeechRecognitionAdapter) -> None:
    with pytest.raises(InvalidInput, match="task=transcribe"):
        wav2vec2.prepare(speech_input(fixture("speech.wav"), task="translate"))


def test_whisper_takes_language_and_task_and_chunks(whisper: SpeechRecognitionAdapter) -> None:
    inputs = [
        speech_input(fixture("speech.mp3"), language="en"),
        speech_input(fixture("speech.wav"), language="chinese", task="translate"),
        speech_input(noise_wav(31)),  # language detected; 2 windows
    ]
    outputs = transcribe(whisper, inputs)
    assert [out.chunks for out in outputs] == [1, 1, 2]
    assert [out.duration_s for out in outputs] == pytest.approx([SPOKEN_S, SPOKEN_S, 31.0], abs=0.01)
    assert all(isinstance(out.text, str) for out in outputs)
    with pytest.raises(InvalidInput, match="unknown to this model"):
        whisper.prepare(speech_input(fixture("speech.wav"), language="klingon"))


def test_bad_options_fail_when_the_adapter_is_made() -> None:
    with pytest.raises(ValueError, match="overlap_s"):
        SpeechRecognitionAdapter(
            ModelSpec(kind="speech-recognition", model="x", options={"chunk_s": 10, "overlap_s": 5})
        )


# --- music generation ----------------------------------------------------


@pytest.fixture(scope="module")
def musicgen(data_dir: Path) -> MusicGenerationAdapter:
    adapter = MusicGenerationAdapter(
        ModelSpec(kind="music-generation", model="builtin:tiny-musicgen"),
        source=str(ensure_built("tiny-musicgen", data_dir=data_dir)),
    )
    adapter.load("cpu")
    return adapter


def compose(
    adapter: MusicGenerationAdapter, *, stop: StopSignal | None = None, **fields: Any
) -> tuple[MusicGenerationOutput, bytes]:
    item = adapter.prepare(MusicGenerationInput(prompt="我想听一首欢快的流行歌曲", **fields))
    [prediction] = adapter.predict([item], stop=stop)
    output = MusicGenerationOutput.model_validate(prediction.output.model_dump())
    [blob] = prediction.blobs
    assert (blob.name, blob.content_type) == ("audio.wav", "audio/wav")
    assert (output.audio.artifact, output.audio.content_type) == (blob.name, blob.content_type)
    return output, blob.data


@pytest.mark.parametrize("duration_s", [1.0, 0.37])
def test_music_is_a_wav_of_the_requested_length(musicgen: MusicGenerationAdapter, duration_s: float) -> None:
    output, wav = compose(musicgen, duration_s=duration_s, seed=3)
    samples, rate = sf.read(io.BytesIO(wav))
    rate_hz = musicgen.model.config.audio_encoder.sampling_rate
    assert rate == output.audio.sampling_rate == rate_hz
    assert abs(len(samples) - duration_s * rate_hz) <= 1
    assert output.audio.duration_s == pytest.approx(duration_s, abs=1 / rate_hz)
    assert np.abs(samples).max() > 0  # not silence


def test_a_seed_reproduces_the_same_bytes(musicgen: MusicGenerationAdapter) -> None:
    first, wav = compose(musicgen, duration_s=0.5, seed=7)
    again, same = compose(musicgen, duration_s=0.5, seed=7)
    _, different = compose(musicgen, duration_s=0.5, seed=8)
    assert first.seed == again.seed == 7 and wav == same and wav != different
    picked, chosen = compose(musicgen, duration_s=0.5)  # no seed: one is picked and reported
    assert compose(musicgen, duration_s=0.5, seed=picked.seed)[1] == chosen


def test_music_longer_than_the_model_allows_is_refused(musicgen: MusicGenerationAdapter) -> None:
    with pytest.raises(InvalidInput, match="longer than this model generates"):
        musicgen.prepare(MusicGenerationInput(prompt="a long song", duration_s=25))


def test_a_stop_request_ends_music_after_the_first_step(musicgen: MusicGenerationAdapter) -> None:
    steps: list[int] = []
    hook = musicgen.model.decoder.register_forward_hook(lambda *_: steps.append(1))
    try:
        stop = StopSignal()
        stop.request(Cancelled("cancelled while it ran"))
        with pytest.raises(Cancelled):
            compose(musicgen, duration_s=1.0, seed=3, stop=stop)
        stopped = len(steps)
        steps.clear()
        compose(musicgen, duration_s=1.0, seed=3)  # the same clip runs to the end when nobody asks
    finally:
        hook.remove()
    assert stopped <= 2 < musicgen.steps(1.0) <= len(steps)
