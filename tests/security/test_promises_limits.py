"""Limits the README promises, on real processes with a database of their own: `max_images`
and `max_items` at submission, `max_batch_pixels` when a worker cuts its model calls, base64
bounded before it is decoded, and the minute counter letting jobs through while Redis is down."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from jobs.settings import Settings
from tests.conftest import MLQ, ROOT, Api, Proc, create_key, process_env, stack_of_its_own, start_api
from tests.services import Services

BUDGET_PIXELS = 2048  # max_batch_pixels here: two 32x32 images a call; a 64x64 one alone
MAX_INPUT_BYTES = 10_000  # max_input_bytes of image-classification here
IMAGE_BLOCK = '[kinds.image-classification]\nmodel = "builtin:tiny-vit"\ngroup = "media"\n'


def models_file(folder: Path, record_to: Path) -> Path:
    demo = (ROOT / "jobs" / "profiles" / "demo.toml").read_text(encoding="utf-8")
    old = IMAGE_BLOCK + "limits = { max_image_pixels = 40_000_000 }\n"
    assert old in demo
    new = IMAGE_BLOCK + (
        'adapter = "tests.security.recording_adapter:RecordingImageClassifier"\n'
        f"max_batch_pixels = {BUDGET_PIXELS}\n"
        f"limits = {{ max_image_pixels = 40_000_000, max_input_bytes = {MAX_INPUT_BYTES} }}\n"
        f"options = {{ record_to = {json.dumps(str(record_to))} }}\n"
    )
    path = folder / "limits.toml"
    path.write_text(demo.replace(old, new), encoding="utf-8")
    return path


def png(side: int) -> str:
    out = io.BytesIO()
    Image.new("RGB", (side, side), (200, 30, side)).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


@dataclass
class Limited:
    api: Api
    no_redis: Api  # the same deployment, its Redis unreachable: what it accepts stays queued, unpublished
    key: str
    calls: Path  # one JSON line per model call of image-classification: its images' pixel counts


@pytest.fixture(scope="module")
def limited(settings: Settings, services: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Limited]:
    folder = tmp_path_factory.mktemp("limits")
    calls = folder / "calls.jsonl"
    with stack_of_its_own(settings, services, models=models_file(folder, calls)) as mine:
        env = process_env(mine, PYTHONPATH=str(ROOT))  # the worker imports the test's adapter
        worker = Proc("limits-worker", ["worker", "--kinds", "image-classification"], env)
        api, api_proc = start_api(mine, "limits-api")
        no_redis = mine.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})  # nothing listens on port 1
        lonely, lonely_proc = start_api(no_redis, "limits-api-no-redis")
        try:
            key = create_key(mine, f"limits-{uuid.uuid4().hex[:6]}")
            yield Limited(api=api, no_redis=lonely, key=key, calls=calls)
        finally:
            for proc in (lonely_proc, api_proc, worker):
                proc.stop()


def test_max_images_and_max_items_are_refused_at_submission_naming_the_limit(limited: Limited) -> None:
    items = [{"id": f"i{i}", "text": f"item {i}"} for i in range(1001)]
    with limited.api.client(limited.key) as http:
        before = len(http.get("/v1/jobs", params={"limit": 200}).json()["data"])
        for kind, over, at_limit, limit in (
            ("image-generation", {"prompt": "a dog", "num_images": 5}, {"prompt": "a dog", "num_images": 4},
             "max_images=4"),
            ("recommendation", {"user": {"interests": ["films"]}, "items": items},
             {"user": {"interests": ["films"]}, "items": items[:1000]}, "max_items=1000"),
        ):  # fmt: skip
            refused = http.post("/v1/jobs", json={"kind": kind, "input": over})
            assert refused.status_code == 422 and limit in refused.text, refused.text[:300]
            assert http.post("/v1/jobs", json={"kind": kind, "input": at_limit}).status_code == 202
        assert len(http.get("/v1/jobs", params={"limit": 200}).json()["data"]) == before + 2  # no refused one


def test_base64_is_bounded_before_it_is_decoded(limited: Limited) -> None:
    """Text that is not base64 at all: past the bound the answer is the bound (nothing was
    decoded), below it the decoder's own refusal."""
    with limited.api.client(limited.key) as http:
        for chars, says in ((4 * MAX_INPUT_BYTES, f"decodes to more than max_input_bytes={MAX_INPUT_BYTES}"),
                            (400, "not valid base64")):  # fmt: skip
            garbage = "!" * chars
            answer = http.post(
                "/v1/jobs", json={"kind": "image-classification", "input": {"image": {"base64": garbage}}}
            )
            assert answer.status_code == 422 and says in answer.text, answer.text[:300]
            assert answer.json()["detail"][0]["loc"][-1] == "base64"


def test_max_batch_pixels_cuts_a_workers_model_calls(limited: Limited) -> None:
    sides = [32, 32, 64, 32, 32, 32, 32]
    jobs = []
    for i, side in enumerate(sides):  # the first six stay queued without a wake-up; the last one's wakes the
        api = limited.no_redis if i < len(sides) - 1 else limited.api  # worker, whose claim takes all seven
        with api.client(limited.key) as http:
            made = http.post(
                "/v1/jobs", json={"kind": "image-classification", "input": {"image": {"base64": png(side)}}}
            )
            assert made.status_code == 202, made.text[:300]
            jobs.append(made.json()["id"])
    with limited.api.client(limited.key) as http:
        ended = [http.get(f"/v1/jobs/{job}", params={"wait": 180}).json() for job in jobs]
    assert [job["status"] for job in ended] == ["succeeded"] * len(sides), ended
    calls = [json.loads(line) for line in limited.calls.read_text().splitlines()]
    assert sorted(size for call in calls for size in call) == sorted(side * side for side in sides)
    for call in calls:  # within the budget, padding counted; an image over it alone
        assert len(call) * max(call) <= BUDGET_PIXELS or len(call) == 1, calls
    assert [4096] in calls and len(calls) >= 4, calls  # without the budget: one call of seven


def test_the_minute_counter_lets_jobs_through_while_redis_is_down(limited: Limited) -> None:
    settings = limited.api.settings
    tenant = f"minute-{uuid.uuid4().hex[:6]}"
    key = create_key(settings, tenant)
    subprocess.run([MLQ, "keys", "limits", "--tenant", tenant, "--jobs-per-minute", "1"],
                   env=process_env(settings), capture_output=True, timeout=60, check=True)  # fmt: skip
    job = {"kind": "text-classification", "input": {"text": "hello"}}  # no worker serves it: it stays queued
    with limited.api.client(key) as http:  # Redis up: the limit holds
        if time.time() % 60 > 55:  # both requests in one minute
            time.sleep(61 - time.time() % 60)
        assert http.post("/v1/jobs", json=job).status_code == 202
        assert http.post("/v1/jobs", json=job).status_code == 429
    with limited.no_redis.client(key) as http:
        accepted = [http.post("/v1/jobs", json=job) for _ in range(3)]
        assert [a.status_code for a in accepted] == [202] * 3, [a.text for a in accepted]
        stored = [http.get(f"/v1/jobs/{a.json()['id']}").json()["status"] for a in accepted]
        assert stored == ["queued"] * 3  # durable in PostgreSQL, for the reconciler to publish
        assert http.get("/readyz").json()["status"] == "degraded"
