"""Audio in and out: decode an upload (WAV, FLAC, OGG, MP3) to mono at the model's rate; write WAV.

soundfile (libsndfile) decodes and encodes; torchaudio only resamples
(``torchaudio.load`` needs torchcodec, which mlq does not install).
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import soundfile as sf

from jobs.errors import InvalidInput

FORMATS = "WAV, FLAC, OGG (Vorbis, Opus) or MP3"
MAX_SAMPLING_RATE_HZ = 192_000  # studio masters; a higher rate in a header is a lie or a bomb
UNKNOWN_FRAMES = 2**62  # libsndfile reports SF_COUNT_MAX when a stream does not state its length
BLOCK_FRAMES = 1 << 16  # decoded and mixed to mono a block at a time: memory stays about one channel
MAX_RESAMPLE_TERMS = 4_000  # 44.1 kHz -> 16 kHz is 441:160; odd rates (44101:16000) need a huge filter bank
DECODE_ERRORS = (sf.LibsndfileError, RuntimeError, ValueError, TypeError, EOFError)


def decode_audio(data: bytes, *, sampling_rate_hz: int, max_duration_s: float, max_bytes: int) -> np.ndarray:
    """Mono float32 samples at ``sampling_rate_hz``; InvalidInput for bad, corrupt or too long audio.

    The size and the header (rate, length) are checked before a sample is decoded.
    """
    if len(data) > max_bytes:
        raise InvalidInput(
            f"the audio file is {len(data)} bytes; the limit for this kind is max_input_bytes={max_bytes}"
        )
    if not data:
        raise InvalidInput(f"the audio file is empty; send {FORMATS}")
    info = read_info(data)
    check_header(info, max_duration_s=max_duration_s)
    mono = read_mono(data)
    return resample(mono, from_hz=int(info.samplerate), to_hz=sampling_rate_hz)


def read_info(data: bytes) -> Any:
    """The header (rate, channels, frames) of an audio file, without decoding its samples."""
    try:
        return sf.info(io.BytesIO(data))
    except DECODE_ERRORS:
        raise InvalidInput(f"the audio file could not be decoded; send {FORMATS}") from None


def check_header(info: Any, *, max_duration_s: float) -> None:
    if not 0 < info.samplerate <= MAX_SAMPLING_RATE_HZ:
        raise InvalidInput(f"the audio's sampling rate {info.samplerate} Hz is not between 1 and 192000 Hz")
    if info.frames >= UNKNOWN_FRAMES:
        raise InvalidInput("the audio file does not state its length (a streamed FLAC?); re-encode it to a file")
    if info.frames <= 0:
        raise InvalidInput("the audio file contains no samples")
    if info.duration > max_duration_s:
        raise InvalidInput(
            f"the audio is {info.duration:.1f} s long; the limit for this kind is max_audio_s={max_duration_s:g}; "
            "cut it into shorter files"
        )


def read_mono(data: bytes) -> np.ndarray:
    """Every sample of ``data``, channels averaged, as float32."""
    blocks: list[np.ndarray] = []
    try:
        with sf.SoundFile(io.BytesIO(data)) as audio:
            for block in audio.blocks(blocksize=BLOCK_FRAMES, dtype="float32", always_2d=True):
                blocks.append(block.mean(axis=1, dtype=np.float32))
    except DECODE_ERRORS as exc:
        raise InvalidInput(f"the audio file is corrupt or truncated ({exc}); re-encode it as {FORMATS}") from None
    mono = np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)
    if mono.size == 0:
        raise InvalidInput("the audio file contains no samples")
    if not np.isfinite(mono).all():
        raise InvalidInput("the audio file contains NaN or infinite samples; re-encode it as 16-bit PCM")
    return mono


def resample(samples: np.ndarray, *, from_hz: int, to_hz: int) -> np.ndarray:
    """1-D float32 ``samples`` at ``to_hz``, with torchaudio's windowed-sinc resampler."""
    if from_hz == to_hz:
        return np.ascontiguousarray(samples, dtype=np.float32)
    divisor = math.gcd(from_hz, to_hz)
    if max(from_hz, to_hz) // divisor > MAX_RESAMPLE_TERMS:
        raise InvalidInput(
            f"the audio's sampling rate {from_hz} Hz is unusual; re-encode it at 16000, 22050, 44100 or 48000 Hz"
        )
    import torch
    from torchaudio.functional import resample as sinc_resample

    with torch.inference_mode():
        resampled = sinc_resample(torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)), from_hz, to_hz)
    return resampled.numpy()


def encode_wav(samples: np.ndarray, *, sampling_rate_hz: int) -> bytes:
    """16-bit PCM WAV of ``samples`` (frames, or frames x channels), clipped to [-1, 1]."""
    clipped = np.clip(np.nan_to_num(np.asarray(samples, dtype=np.float32)), -1.0, 1.0)
    buffer = io.BytesIO()
    sf.write(buffer, clipped, sampling_rate_hz, format="WAV", subtype="PCM_16")
    return buffer.getvalue()
