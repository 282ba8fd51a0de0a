"""Hostile bodies against a real ``mlq api`` (issue #14): numbers JSON cannot carry, lone
surrogates, NUL anywhere, chunked bodies past the limit or without a key, huge inputs echoed
back, unbounded fields and pixel bombs. Each gets a 4xx naming the field or the limit, fast,
with nothing stored, and the API stays small and responsive."""

from __future__ import annotations

import base64
import json
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from jobs.settings import Settings
from jobs.tables import Batch, Job
from tests.conftest import Api, Proc, create_key, start_api
from tests.unit.models.test_vision import png_claiming

LIMIT_BYTES = 2_000_000  # this API's max_request_bytes (and batch_max_bytes)


@pytest.fixture(scope="module")
def api(settings: Settings) -> Iterator[tuple[Api, Proc]]:
    limits = {"max_request_bytes": LIMIT_BYTES, "batch_max_bytes": LIMIT_BYTES}
    api, proc = start_api(Settings(**{**settings.model_dump(), **limits}), "api-hostile")
    try:
        yield api, proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def key(api: tuple[Api, Proc]) -> str:
    return create_key(api[0].settings, f"hostile-{uuid.uuid4().hex[:6]}")


def stored(sessions: sessionmaker[Session]) -> tuple[int, int]:
    with sessions() as session:
        return (
            session.execute(select(func.count()).select_from(Job)).scalar_one(),
            session.execute(select(func.count()).select_from(Batch)).scalar_one(),
        )


def post_raw(api: Api, path: str, body: bytes, *, key: str, content_type: str = "application/json") -> Any:
    import httpx

    headers = {"Authorization": f"Bearer {key}", "Content-Type": content_type}
    return httpx.post(f"{api.url}{path}", content=body, headers=headers, timeout=30)


GENERATION = '{"kind":"text-generation","input":{"prompt":"hi"%s}%s}'


@pytest.mark.parametrize(
    ("input_extra", "job_extra", "field"),
    [
        (',"temperature":NaN', "", ["body", "input", "temperature"]),
        (',"temperature":Infinity', "", ["body", "input", "temperature"]),
        (',"top_p":-Infinity', "", ["body", "input", "top_p"]),
        (',"seed":1e400', "", ["body", "input", "seed"]),
        (',"top_k":1e400', "", ["body", "input", "top_k"]),
        ("", ',"priority":Infinity', ["body", "priority"]),
        ("", ',"metadata":{"score":NaN}', ["body", "metadata", "score"]),
        ("", ',"metadata":{"note":"a\\ud800b"}', ["body", "metadata", "note"]),
        (',"stop":["a\\udfffb"]', "", ["body", "input", "stop", 0]),
    ],
)
def test_non_finite_numbers_and_lone_surrogates_are_a_422_naming_the_field(
    api: tuple[Api, Proc], key: str, sessions: sessionmaker[Session], input_extra: str, job_extra: str, field: list[Any]
) -> None:
    before = stored(sessions)
    answer = post_raw(api[0], "/v1/jobs", (GENERATION % (input_extra, job_extra)).encode(), key=key)
    assert answer.status_code == 422, answer.text
    assert {tuple(e["loc"][: len(field)]) for e in answer.json()["detail"]} == {tuple(field)}  # a union: one each
    assert stored(sessions) == before


@pytest.mark.parametrize(
    "body",
    [
        '{"kind":"text-classification","input":{"text":"a\\ud800b"}}',
        '{"kind":"chat","input":{"messages":[{"role":"user","content":"\\udc00"}]}}',
        '{"kind":"embedding","input":{"text":"ok","\\ud800":1}}',
    ],
)
def test_a_lone_surrogate_anywhere_in_a_job_is_a_422(api: tuple[Api, Proc], key: str, body: str) -> None:
    answer = post_raw(api[0], "/v1/jobs", body.encode(), key=key)
    assert answer.status_code == 422, answer.text
    assert "surrogate" in answer.text or "extra" in answer.text


def test_the_upload_form_refuses_non_finite_numbers_and_surrogates(api: tuple[Api, Proc], key: str) -> None:
    import httpx

    with httpx.Client(base_url=api[0].url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
        for text, field in (('{"top_k": NaN}', "top_k"), ('{"top_k": 1e400}', "top_k"), ('{"x": "\\ud800"}', "x")):
            answer = http.post(
                "/v1/jobs/upload",
                data={"kind": "image-classification", "input": text},
                files={"image": ("a.png", b"\x89PNG", "image/png")},
            )
            assert answer.status_code == 422, answer.text
            assert field in answer.json()["detail"][0]["loc"], answer.text


def test_a_422_echoes_a_short_excerpt_not_the_input(api: tuple[Api, Proc], key: str) -> None:
    text = "x" * 1_500_000  # over max_text_chars, under the request limit
    answer = post_raw(api[0], "/v1/jobs", json.dumps({"kind": "embedding", "input": {"text": text}}).encode(), key=key)
    assert answer.status_code == 422
    assert len(answer.content) < 2000, len(answer.content)
    [error] = answer.json()["detail"]
    assert error["loc"] == ["body", "input", "text"] and "1500000 characters" in error["input"]


def test_nul_in_query_path_custom_id_and_batch_metadata_is_a_422_naming_it(
    api: tuple[Api, Proc], key: str, sessions: sessionmaker[Session]
) -> None:
    import httpx

    before = stored(sessions)
    with httpx.Client(base_url=api[0].url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
        query = http.get("/v1/jobs?kind=%00")
        assert query.status_code == 422 and query.json()["detail"][0]["loc"] == ["query", "kind"], query.text
        path = http.get(f"/v1/jobs/{uuid.uuid4()}/artifacts/a%00b")
        assert path.status_code == 422 and path.json()["detail"][0]["loc"] == ["path"], path.text
        line = http.post(
            "/v1/batches?kind=moderation",
            content=b'{"custom_id":"a\\u0000b","input":{"text":"x"}}\n',
            headers={"Content-Type": "application/jsonl"},
        )
        assert line.status_code == 422 and line.json()["detail"]["errors"][0]["loc"] == ["custom_id"], line.text
        form = http.post(
            "/v1/batches",
            data={"kind": "moderation", "metadata": '{"a": "x\\u0000y"}'},
            files={"file": ("b.jsonl", b'{"custom_id":"a","input":{"text":"x"}}\n')},
        )
        assert form.status_code == 422 and form.json()["detail"][0]["loc"] == ["body", "metadata", "a"], form.text
    assert stored(sessions) == before


def raw_request(api: Api, head: str) -> socket.socket:
    host, port = api.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(head.encode())
    return sock


def answer_of(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_a_chunked_body_without_a_key_is_refused_before_it_is_read(api: tuple[Api, Proc]) -> None:
    """The 401 comes back while the client has sent only the headers and one chunk of a body
    it announced as endless: nothing waits for the body."""
    first = b'{"kind": "embedding", "input": {"text": "'
    sock = raw_request(
        api[0],
        "POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        f"{len(first):x}\r\n{first.decode()}\r\n",
    )
    with sock:
        head = answer_of(sock)
    assert head.startswith(b"HTTP/1.1 401"), head[:200]


def send_chunked(
    api: Api, path: str, *, key: str, total_bytes: int, content_type: str, start: bytes
) -> tuple[bytes, int]:
    """Send ``start``, then up to ``total_bytes`` in chunks; the answer's head and the bytes sent."""
    sock = raw_request(
        api,
        f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    piece = b"x" * (1 << 20)
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    sent = 0
    with sock:
        try:
            sock.sendall(f"{len(start):x}\r\n".encode() + start + b"\r\n")
            while sent < total_bytes:
                sock.sendall(chunk)
                sent += len(piece)
        except OSError:  # the server answered and closed: it stopped reading
            pass
        return answer_of(sock), sent


FILE_PART = b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n'


@pytest.mark.parametrize(
    ("path", "content_type", "start", "limit"),
    [
        ("/v1/jobs", "application/json", b'{"kind":"embedding","input":{"text":"', "max_request_bytes"),
        ("/v1/jobs/upload", "multipart/form-data; boundary=b", FILE_PART, "max_request_bytes"),
        ("/v1/batches", "application/jsonl", b'{"custom_id":"a","input":{"text":"', "batch_max_bytes"),
    ],
)
def test_a_chunked_body_is_counted_as_it_is_read_and_refused_past_the_limit(
    api: tuple[Api, Proc], key: str, path: str, content_type: str, start: bytes, limit: str
) -> None:
    process = psutil.Process(api[1].popen.pid)
    rss_before = process.memory_info().rss
    head, sent = send_chunked(api[0], path, key=key, total_bytes=150 << 20, content_type=content_type, start=start)
    assert head.startswith(b"HTTP/1.1 413") and f"{limit}=2000000".encode() in head, head[:300]
    assert sent < 150 << 20, "the server read the whole 150 MB"
    grown = process.memory_info().rss - rss_before
    assert grown < 50 << 20, f"the API grew by {grown >> 20} MB"


@pytest.mark.parametrize(
    ("input_", "field"),
    [
        ({"user": {"interests": ["x" * 5000]}, "items": [{"id": "a", "text": "b"}]}, ["user", "interests", 0]),
        ({"user": {"recent": ["ok", "y" * 5000]}, "items": [{"id": "a", "text": "b"}]}, ["user", "recent", 1]),
    ],
)
def test_every_string_in_an_input_has_a_bound(api: tuple[Api, Proc], key: str, input_: Any, field: list[Any]) -> None:
    answer = post_raw(api[0], "/v1/jobs", json.dumps({"kind": "recommendation", "input": input_}).encode(), key=key)
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["loc"][: 2 + len(field)] == ["body", "input", *field], answer.text


def test_stop_strings_are_short(api: tuple[Api, Proc], key: str) -> None:
    body = {"kind": "text-generation", "input": {"prompt": "hi", "stop": ["z" * 100_000]}}
    answer = post_raw(api[0], "/v1/jobs", json.dumps(body).encode(), key=key)
    assert answer.status_code == 422 and answer.json()["detail"][0]["loc"] == ["body", "input", "stop", 0]


@pytest.mark.parametrize(
    ("metadata", "why"), [("[1]", "dict"), ("123", "dict"), (json.dumps({f"k{i}": {"n": i} for i in range(1000)}), "")]
)
def test_a_multipart_bulk_run_takes_metadata_as_the_json_form_does(
    api: tuple[Api, Proc], key: str, sessions: sessionmaker[Session], metadata: str, why: str
) -> None:
    import httpx

    before = stored(sessions)
    with httpx.Client(base_url=api[0].url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
        answer = http.post(
            "/v1/batches",
            data={"kind": "moderation", "metadata": metadata},
            files={"file": ("b.jsonl", b'{"custom_id":"a","input":{"text":"x"}}\n')},
        )
        assert answer.status_code == 422, answer.text
        assert answer.json()["detail"][0]["loc"][:2] == ["body", "metadata"] and why in answer.text
        assert http.get("/v1/batches").status_code == 200
    assert stored(sessions) == before


def test_an_image_over_the_default_pixel_limit_is_refused_at_submission(api: tuple[Api, Proc], key: str) -> None:
    """The demo models file sets no max_image_pixels for moderation: the default applies."""
    bomb = base64.b64encode(png_claiming(100_000, 100_000)).decode()
    answer = post_raw(
        api[0], "/v1/jobs", json.dumps({"kind": "moderation", "input": {"image": {"base64": bomb}}}).encode(), key=key
    )
    assert answer.status_code == 422 and "max_image_pixels=40000000" in answer.text, answer.text


def test_the_api_stays_small_and_answers_after_all_this(api: tuple[Api, Proc], key: str) -> None:
    import httpx

    started = time.monotonic()
    assert httpx.get(f"{api[0].url}/healthz", timeout=10).status_code == 200
    assert time.monotonic() - started < 5
    assert psutil.Process(api[1].popen.pid).memory_info().rss < 1 << 30
    other = create_key(api[0].settings, f"hostile-other-{uuid.uuid4().hex[:6]}")
    with httpx.Client(base_url=api[0].url, headers={"Authorization": f"Bearer {other}"}, timeout=30) as http:
        assert http.post("/v1/jobs", json={"kind": "embedding", "input": {"text": "still here"}}).status_code == 202
