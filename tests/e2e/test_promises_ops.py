"""What the README promises operators and clients, on a deployment of its own (a music worker, the
API, JSON logs): `?wait` answers as soon as the job finishes, a job's log lines carry
`batch_size`, `error_code` and `worker`, the ops page lists recent failures with their
messages and plays generated audio (headless Chromium), and `mlq batch cancel` cancels a run."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest

from jobs.settings import Settings
from tests.conftest import MLQ, Api, Proc, create_key, process_env, stack_of_its_own, start_api
from tests.services import Services

MUSIC = {"prompt": "a happy song", "duration_s": 1, "seed": 5}
TOO_LONG = {"prompt": "a very long song", "duration_s": 30}  # the submission limit allows it; the model makes 20 s


@dataclass
class Ops:
    api: Api
    worker: Proc
    admin_key: str


@pytest.fixture(scope="module")
def ops(settings: Settings, services: Services) -> Iterator[Ops]:
    with stack_of_its_own(settings, services, log_format="json") as mine:
        worker = Proc("promises-ops-worker", ["worker", "--kinds", "music-generation"], process_env(mine))
        api, api_proc = start_api(mine, "promises-ops-api")
        try:
            yield Ops(
                api=api, worker=worker, admin_key=create_key(mine, f"ops-{uuid.uuid4().hex[:6]}", "submit,read,admin")
            )
        finally:
            api_proc.stop()
            worker.stop()


@pytest.fixture(scope="module")
def music(ops: Ops) -> dict[str, Any]:
    """A music job and a job that fails at run time, both done."""
    with ops.api.client(ops.admin_key) as http:
        made = http.post("/v1/jobs", json={"kind": "music-generation", "input": MUSIC}).json()
        failed = http.post("/v1/jobs", json={"kind": "music-generation", "input": TOO_LONG}).json()
        done = {name: http.get(f"/v1/jobs/{job['id']}", params={"wait": 240}).json() for name, job in
                (("music", made), ("failed", failed))}  # fmt: skip
    assert done["music"]["status"] == "succeeded" and done["failed"]["status"] == "failed", done
    return done


@pytest.fixture
def browser() -> Iterator[Any]:
    """Debian's headless Chromium, as tests/e2e/test_ops.py starts it."""
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


def stamp(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def test_wait_answers_as_soon_as_the_job_finishes(ops: Ops, music: dict[str, Any]) -> None:
    with ops.api.client(ops.admin_key) as http:
        job = http.post("/v1/jobs", json={"kind": "music-generation", "input": MUSIC}).json()
        asked = time.time()
        done = http.get(f"/v1/jobs/{job['id']}", params={"wait": 60}).json()
        answered = time.time()
    assert done["status"] == "succeeded"
    finished = stamp(done["finished_at"])  # PostgreSQL's clock: this machine's
    assert finished > asked  # the wait was real: the job was still running when it began
    # answered within a second of the finish (NOTIFY), not at the end of the 60 s nor at a poll's
    # next tick (measured from the finish, so a slow POST on a busy machine does not count)
    assert answered - finished < 1.0, (answered - finished, finished - asked)


def test_a_jobs_json_log_lines_carry_batch_size_error_code_and_worker(ops: Ops, music: dict[str, Any]) -> None:
    lines = [json.loads(line) for line in ops.worker.log_path.read_text().splitlines() if line.startswith("{")]
    [failed] = [line for line in lines if line.get("job_id") == music["failed"]["id"]]
    assert (
        failed["error_code"] == "invalid_input" and failed["batch_size"] >= 1 and failed["kind"] == "music-generation"
    )
    assert failed["worker"].startswith("mlq-cpu-") and failed["attempt"] == 1
    [done] = [line for line in lines if music["music"]["id"] in line.get("job_ids", ())]
    assert done["batch_size"] >= 1 and done["worker"] == failed["worker"] and "error_code" not in done


def test_the_ops_page_lists_recent_failures_and_plays_audio(ops: Ops, music: dict[str, Any], browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60, poll_frequency=0.2)
    browser.get(f"{ops.api.url}/ui")
    browser.find_element(By.ID, "key").send_keys(ops.admin_key)
    browser.find_element(By.ID, "login").submit()
    failure = (
        "const link = document.querySelector('#failures a.job-link[data-job=\"' + arguments[0] + '\"]');"
        "return link ? link.closest('tr').textContent : null;"
    )
    row = wait.until(lambda d: d.execute_script(failure, music["failed"]["id"]))
    assert "invalid_input" in row and "longer than this model generates" in row, row

    browser.find_element(By.ID, "job-id").send_keys(music["music"]["id"])
    browser.find_element(By.ID, "job-form").submit()
    ready = (
        "const a = document.querySelector('#job audio.artifact');"
        "return a && a.readyState >= 4 ? [a.title, a.duration, a.controls] : null;"
    )
    title, duration_s, controls = wait.until(lambda d: d.execute_script(ready))
    assert title == "audio.wav" and controls and abs(duration_s - MUSIC["duration_s"]) < 0.1, duration_s
    played = browser.execute_async_script(
        "const done = arguments[arguments.length - 1], a = document.querySelector('#job audio.artifact');"
        "a.muted = true;"  # headless, and no sound card: a muted element plays all the same
        "a.play().then(() => setTimeout(() => done([a.currentTime, a.paused, a.error && a.error.code]), 800),"
        "              e => done(['refused', String(e), null]));"
    )
    assert played[0] != "refused" and played[0] > 0.3 and played[1] is False and played[2] is None, played


def test_batch_cancel_from_the_command_line(ops: Ops) -> None:
    lines = [{"custom_id": f"t{i}", "input": {"text": f"post {i}"}} for i in range(20)]
    with ops.api.client(ops.admin_key) as http:  # no worker serves this kind: every item waits
        batch = http.post("/v1/batches", json={"kind": "text-classification", "items": lines}).json()
    env = process_env(ops.api.settings, MLQ_API_URL=ops.api.url, MLQ_API_KEY=ops.admin_key)
    out = subprocess.run([MLQ, "batch", "cancel", batch["id"]], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["id"] == batch["id"] and shown["status"] == "cancelled" and shown["counts"]["cancelled"] == 20
    with ops.api.client(ops.admin_key) as http:
        again = http.get(f"/v1/batches/{batch['id']}").json()
        results = [json.loads(line) for line in http.get(f"/v1/batches/{batch['id']}/results").text.splitlines()]
    assert again["status"] == "cancelled" and again["counts"]["queued"] == 0
    assert {r["status"] for r in results} == {"cancelled"} and len(results) == 20
