"""Every kind end to end: over HTTP, through Redis, a real worker and the demo models."""

from __future__ import annotations

import base64
import io
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import soundfile
from PIL import Image

from tests.conftest import Api

WAIT_S = 180  # the first jobs wait for the worker to build and load the demo models


def _huge_png_header() -> str:
    """A PNG whose header claims 50,000 x 50,000 pixels (no pixel data)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 50_000, 50_000, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    return base64.b64encode(png).decode()


def _long_wav() -> str:
    """A real 20-minute WAV at 8 Hz (small, but over the demo's max_audio_s=600)."""
    out = io.BytesIO()
    soundfile.write(out, [0.0] * (8 * 1200), 8, format="WAV", subtype="PCM_16")
    return base64.b64encode(out.getvalue()).decode()


HUGE_PNG_HEADER = _huge_png_header()
LONG_WAV_HEADER = _long_wav()
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def b64(data: bytes) -> dict[str, str]:
    return {"base64": base64.b64encode(data).decode()}


def png(width: int = 48, height: int = 40, color: str = "orange") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, format="PNG")
    return out.getvalue()


def finish(http: httpx.Client, job: dict[str, Any]) -> dict[str, Any]:
    assert "id" in job, job
    done: dict[str, Any] = http.get(f"/v1/jobs/{job['id']}", params={"wait": WAIT_S}).json()
    assert done["status"] in ("succeeded", "failed"), done
    return done


def run(http: httpx.Client, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
    response = http.post("/v1/jobs", json={"kind": kind, "input": payload})
    assert response.status_code == 202, response.text
    return finish(http, response.json())


def succeeded(http: httpx.Client, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
    done = run(http, kind, payload)
    assert done["status"] == "succeeded", done
    output: dict[str, Any] = done["output"]
    return {**output, "_job": done}


@pytest.fixture(scope="module")
def http(stack: Api, key: str) -> httpx.Client:
    return stack.client(key)


def test_text_generation_is_reproducible_with_a_seed(http: httpx.Client) -> None:
    ask = {"prompt": "写一篇关于春天的短文：", "max_new_tokens": 12, "temperature": 0.9, "seed": 11}
    first, second = succeeded(http, "text-generation", ask), succeeded(http, "text-generation", ask)
    assert first["text"] == second["text"] and 0 < first["completion_tokens"] <= 12
    assert first["finish_reason"] in ("stop", "length") and first["prompt_tokens"] > 0


def test_text2text_and_chat(http: httpx.Client) -> None:
    rewritten = succeeded(http, "text2text-generation", {"text": "summarize: 这是一条新闻标题", "max_new_tokens": 8})
    assert isinstance(rewritten["text"], str) and rewritten["completion_tokens"] <= 8
    reply = succeeded(
        http, "chat", {"messages": [{"role": "user", "content": "请问我的订单什么时候发货？"}], "max_new_tokens": 8}
    )
    assert reply["message"]["role"] == "assistant" and isinstance(reply["message"]["content"], str)


def test_speech_recognition_accepts_wav_upload_flac_inline_and_mp3(http: httpx.Client) -> None:
    expected_s = soundfile.info(str(FIXTURES / "speech.wav")).duration
    uploaded = http.post(
        "/v1/jobs/upload",
        data={"kind": "speech-recognition"},
        files={"audio": ("speech.wav", (FIXTURES / "speech.wav").read_bytes(), "audio/wav")},
    )
    assert uploaded.status_code == 202, uploaded.text
    assert uploaded.json()["input"]["audio"] == {"artifact": "input-audio"}  # bytes live in the artifact store
    wav = finish(http, uploaded.json())
    flac = succeeded(http, "speech-recognition", {"audio": b64((FIXTURES / "speech.flac").read_bytes())})
    mp3 = http.post(
        "/v1/jobs/upload",
        data={"kind": "speech-recognition", "input": '{"language": "en"}'},
        files={"audio": ("speech.mp3", (FIXTURES / "speech.mp3").read_bytes(), "audio/mpeg")},
    )
    mp3_done = finish(http, mp3.json())
    for done in (wav, flac["_job"], mp3_done):
        assert done["status"] == "succeeded", done
        assert isinstance(done["output"]["text"], str) and done["output"]["sampling_rate"] == 16000
        assert abs(done["output"]["duration_s"] - expected_s) < 0.2


def test_corrupt_files_fail_their_own_job_and_the_worker_goes_on(http: httpx.Client) -> None:
    broken_audio = run(http, "speech-recognition", {"audio": b64(b"RIFF\x00\x00\x00\x00WAVEnot really audio")})
    broken_image = run(http, "image-classification", {"image": b64(b"\x89PNG\r\n\x1a\n garbage")})
    for done in (broken_audio, broken_image):
        assert done["status"] == "failed" and done["error"]["code"] == "invalid_input", done
        assert done["error"]["message"]
    fine = succeeded(http, "image-classification", {"image": b64(png()), "top_k": 2})
    assert len(fine["labels"]) == 2


def test_image_classification_gives_top_k_labels(http: httpx.Client) -> None:
    out = succeeded(http, "image-classification", {"image": b64(png(64, 64, "blue")), "top_k": 3})
    scores = [x["score"] for x in out["labels"]]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True) and out["label"] == out["labels"][0]["label"]


def test_image_generation_writes_pngs_of_the_asked_size_reproducibly(
    http: httpx.Client, stack: Api, other_key: str
) -> None:
    ask = {
        "prompt": "一只穿着蓝色衣服的狗",
        "num_inference_steps": 2,
        "width": 64,
        "height": 48,
        "seed": 5,
        "num_images": 2,
    }
    first, second = succeeded(http, "image-generation", ask), succeeded(http, "image-generation", ask)
    assert first["seed"] == 5 and len(first["images"]) == 2

    def fetch(out: dict[str, Any], i: int) -> httpx.Response:
        return http.get(f"/v1/jobs/{out['_job']['id']}/artifacts/{out['images'][i]['artifact']}")

    picture = fetch(first, 0)
    assert picture.status_code == 200 and picture.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(picture.content)).size == (64, 48)
    assert picture.content == fetch(second, 0).content  # same seed, same bytes
    listed = http.get(f"/v1/jobs/{first['_job']['id']}/artifacts").json()
    assert {a["name"] for a in listed} == {"image-0.png", "image-1.png"}
    with stack.client(other_key) as theirs:
        assert theirs.get(f"/v1/jobs/{first['_job']['id']}/artifacts/image-0.png").status_code == 404


def test_music_generation_writes_a_wav_of_the_asked_duration(http: httpx.Client) -> None:
    out = succeeded(http, "music-generation", {"prompt": "我想听一首欢快的流行歌曲", "duration_s": 1.0, "seed": 3})
    audio = http.get(f"/v1/jobs/{out['_job']['id']}/artifacts/{out['audio']['artifact']}")
    assert audio.status_code == 200 and audio.headers["content-type"] == "audio/wav"
    samples, rate = soundfile.read(io.BytesIO(audio.content))
    assert rate == out["audio"]["sampling_rate"] and abs(len(samples) / rate - 1.0) < 0.05


def test_moderation_of_text_and_image(http: httpx.Client) -> None:
    threat = succeeded(http, "moderation", {"text": "I will hurt you if you come here again"})
    calm = succeeded(http, "moderation", {"text": "the team won the championship"})
    assert threat["flagged"] and "violence" in threat["flagged_categories"] and not calm["flagged"]
    picture = succeeded(http, "moderation", {"image": b64(png())})
    assert set(picture["category_scores"]) == set(threat["category_scores"])


def test_recommendation_puts_the_film_first_for_a_movie_fan(http: httpx.Client) -> None:
    out = succeeded(
        http,
        "recommendation",
        {
            "user": {"interests": ["I love watching movies"], "recent": ["watched a film last night"]},
            "items": [
                {"id": "stock", "text": "the stock market closed lower"},
                {"id": "film", "text": "a new science fiction movie opens in cinemas this week"},
                {"id": "bread", "text": "how to bake sourdough bread at home"},
            ],
            "top_k": 2,
        },
    )
    assert [i["id"] for i in out["items"]][:1] == ["film"] and len(out["items"]) == 2


@pytest.mark.parametrize(
    ("kind", "payload", "loc", "says"),
    [
        ("image-generation", {"prompt": "p", "width": 4096, "height": 4096}, ["body", "input"], "max_image_pixels"),
        (
            "image-generation",
            {"prompt": "p", "num_inference_steps": 500},
            ["body", "input", "num_inference_steps"],
            "max_steps",
        ),
        ("music-generation", {"prompt": "p", "duration_s": 600}, ["body", "input", "duration_s"], "max_duration_s"),
        (
            "text-generation",
            {"prompt": "p", "max_new_tokens": 100000},
            ["body", "input", "max_new_tokens"],
            "max_new_tokens",
        ),
        ("speech-recognition", {"audio": {"base64": "!!not base64!!"}}, ["body", "input", "audio", "base64"], "base64"),
        (
            "speech-recognition",
            {"audio": {"artifact": "input-audio"}},
            ["body", "input", "audio", "artifact"],
            "uploaded",
        ),
        ("speech-recognition", {}, ["body", "input", "audio"], "Field required"),
        ("recommendation", {"user": {}, "items": [{"id": "a", "text": "x"}]}, ["body", "input", "user"], "interest"),
        (
            "image-classification",
            {"image": {"base64": HUGE_PNG_HEADER}},
            ["body", "input", "image"],
            "max_image_pixels",
        ),
        ("speech-recognition", {"audio": {"base64": LONG_WAV_HEADER}}, ["body", "input", "audio"], "max_audio_s"),
        ("chat", {"messages": [{"role": "robot", "content": "x"}]}, ["body", "input", "messages", 0, "role"], ""),
    ],
)
def test_limits_and_shapes_are_enforced_at_submission(
    api_without_workers: Api, key: str, kind: str, payload: dict[str, Any], loc: list[Any], says: str
) -> None:
    with api_without_workers.client(key) as client:
        response = client.post(
            "/v1/jobs", json={"kind": kind, "input": payload}, headers={"Idempotency-Key": str(uuid.uuid4())}
        )
    assert response.status_code == 422, response.text
    assert any(e["loc"][: len(loc)] == loc and says in e["msg"] for e in response.json()["detail"]), response.text
