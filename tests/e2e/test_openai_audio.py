"""``client.audio.transcriptions.create`` of the official ``openai`` package against a real
``mlq api`` and worker: each response format parses as the SDK expects, each call is a
``speech-recognition`` job stored like any other, and refusals come back as the SDK's own
exceptions, naming the parameter, with nothing stored."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import soundfile

from tests.conftest import Api, create_key

FIXTURES = Path(__file__).parent.parent / "fixtures"
WAV = FIXTURES / "speech.wav"
DURATION_S = soundfile.info(str(WAV)).duration  # 1.90 s: "hello world, this is a test"


@pytest.fixture
def tenant_key(stack: Api) -> str:
    return create_key(stack.settings, f"audio-{uuid.uuid4().hex[:6]}")


def sdk(stack: Api, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key=key, max_retries=0, timeout=240)


def jobs_of(stack: Api, key: str) -> list[dict[str, Any]]:
    with stack.client(key) as http:
        page: list[dict[str, Any]] = http.get("/v1/jobs", params={"limit": 100}).json()["data"]
    return page


def wav() -> tuple[str, bytes, str]:
    return ("speech.wav", WAV.read_bytes(), "audio/wav")


def test_each_response_format_parses_in_the_sdk(stack: Api, tenant_key: str) -> None:
    client = sdk(stack, tenant_key)
    plain = client.audio.transcriptions.create(model="speech-recognition", file=wav())
    assert isinstance(plain, openai.types.audio.Transcription) and isinstance(plain.text, str)
    assert plain.usage is not None and plain.usage.type == "duration"
    assert plain.usage.seconds == pytest.approx(DURATION_S, abs=0.2)
    text = client.audio.transcriptions.create(model="speech-recognition", file=wav(), response_format="text")
    assert isinstance(text, str) and text == plain.text  # the same audio, the same transcript
    verbose = client.audio.transcriptions.create(
        model="speech-recognition", file=WAV, response_format="verbose_json", language="en", temperature=0
    )
    assert isinstance(verbose, openai.types.audio.TranscriptionVerbose)
    assert verbose.text == plain.text and verbose.language == "en" and verbose.segments == []
    assert verbose.duration == pytest.approx(DURATION_S, abs=0.2)
    assert (verbose.model_extra or {})["task"] == "transcribe"
    flac = client.audio.transcriptions.create(
        model="speech-recognition", file=("speech.flac", (FIXTURES / "speech.flac").read_bytes())
    )
    assert flac.usage is not None and flac.usage.seconds == pytest.approx(DURATION_S, abs=0.2)  # type: ignore[union-attr]


def test_a_transcription_is_a_job_stored_like_any_other(stack: Api, tenant_key: str) -> None:
    client = sdk(stack, tenant_key)
    answer = client.audio.transcriptions.create(model="speech-recognition", file=wav(), language="en")
    [job_id] = (answer.model_extra or {})["mlq"]["job_ids"]
    raw = client.audio.transcriptions.with_raw_response.create(
        model="speech-recognition", file=wav(), response_format="text"
    )
    text_job_id = raw.headers["Mlq-Job-Ids"]  # the text format names its job in a header
    assert raw.headers["content-type"].startswith("text/plain") and raw.parse() == answer.text
    with stack.client(tenant_key) as http:
        job = http.get(f"/v1/jobs/{job_id}").json()
        text_job = http.get(f"/v1/jobs/{text_job_id}").json()
        stored = http.get(f"/v1/jobs/{job_id}/artifacts/input-audio")
    assert job["kind"] == "speech-recognition" and job["status"] == "succeeded"
    assert job["input"] == {"audio": {"artifact": "input-audio"}, "language": "en", "task": "transcribe"}
    assert job["output"]["text"] == answer.text and job["output"]["sampling_rate"] == 16000
    assert text_job["status"] == "succeeded" and text_job["input"]["language"] is None  # none given
    assert text_job["output"]["text"] == answer.text
    assert stored.status_code == 200 and stored.content == WAV.read_bytes()  # the upload, kept with its job


def test_refusals_name_the_parameter_and_store_nothing(stack: Api, tenant_key: str) -> None:
    client = sdk(stack, tenant_key)
    before = len(jobs_of(stack, tenant_key))
    cases: list[tuple[dict[str, Any], str]] = [
        ({"response_format": "srt"}, "response_format"),  # no timestamps to write one
        ({"response_format": "vtt"}, "response_format"),
        ({"prompt": "hello world"}, "prompt"),  # the kind takes none: said, not ignored
        ({"temperature": 0.4}, "temperature"),  # greedy decoding only
        ({"stream": True}, "stream"),
        ({"timestamp_granularities": ["word"]}, "timestamp_granularities[]"),  # a field mlq does not read
        ({"extra_body": {"diarize": "true"}}, "diarize"),
        ({"language": "x" * 40}, "language"),  # over the kind's 32 characters
        ({"model": "embedding"}, "model"),  # a model of another kind
    ]
    for extra, param in cases:
        with pytest.raises(openai.BadRequestError) as refused:
            client.audio.transcriptions.create(**{"model": "speech-recognition", "file": wav(), **extra})
        assert refused.value.param == param, (extra, refused.value.message)
        assert refused.value.type == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as empty:
        client.audio.transcriptions.create(model="speech-recognition", file=("empty.wav", b""))
    assert empty.value.param == "file" and "empty" in empty.value.message
    with pytest.raises(openai.NotFoundError):
        client.audio.transcriptions.create(model="whisper-1", file=wav())
    assert len(jobs_of(stack, tenant_key)) == before  # nothing was stored


def test_a_form_without_its_file_or_model_is_refused_by_name(stack: Api, tenant_key: str) -> None:
    url = f"{stack.url}/v1/audio/transcriptions"
    headers = {"Authorization": f"Bearer {tenant_key}"}
    before = len(jobs_of(stack, tenant_key))
    forms: list[tuple[dict[str, Any], str]] = [
        ({"model": (None, "speech-recognition")}, "file"),  # multipart, no file part
        ({"model": (None, "speech-recognition"), "file": (None, "not a file")}, "file"),  # text where the file goes
        ({"file": wav()}, "model"),
        ({"file": wav(), "model": (None, "speech-recognition"), "language": ("l.txt", b"en")}, "language"),
    ]
    for files, param in forms:
        answer = httpx.post(url, files=files, headers=headers, timeout=60)
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["param"] == param, answer.text
    as_json = httpx.post(url, json={"model": "speech-recognition"}, headers=headers, timeout=60)
    assert as_json.status_code == 415 and "multipart" in as_json.json()["error"]["message"]
    assert len(jobs_of(stack, tenant_key)) == before


def test_audio_the_worker_cannot_decode_is_a_400_naming_the_file(stack: Api, tenant_key: str) -> None:
    client = sdk(stack, tenant_key)
    with pytest.raises(openai.BadRequestError) as broken:
        client.audio.transcriptions.create(model="speech-recognition", file=("x.wav", b"RIFF\x00\x00\x00\x00WAVEjunk"))
    assert broken.value.param == "file"
    [job] = jobs_of(stack, tenant_key)  # the job ran, and failed on its input, as any other would
    assert job["kind"] == "speech-recognition" and job["status"] == "failed"
    assert job["error"]["code"] == "invalid_input"


def test_a_key_without_read_cannot_transcribe(stack: Api) -> None:
    submit_only = create_key(stack.settings, f"audio-w-{uuid.uuid4().hex[:6]}", "submit")
    with pytest.raises(openai.PermissionDeniedError) as denied:
        sdk(stack, submit_only).audio.transcriptions.create(model="speech-recognition", file=wav())
    assert "read" in denied.value.message
