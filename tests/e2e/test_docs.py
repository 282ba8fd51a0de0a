"""/docs and /redoc in headless Chromium with no network at all: every operation shows, and
nothing is loaded from anywhere but the API (issue #17: Swagger UI came from a CDN)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import Api


@pytest.fixture
def offline_browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (binary and driver):
        pytest.fail("Chromium and ChromeDriver are missing: `make test` installs Debian's chromium and chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-dev-shm-usage",
        "--window-size=1400,1800",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ):  # no name resolves: no network
        options.add_argument(flag)  # fmt: skip
    chrome = webdriver.Chrome(service=Service(driver), options=options)
    try:
        yield chrome
    finally:
        chrome.quit()


def loaded_from(chrome: Any) -> set[str]:
    """The origins of every resource the page loaded."""
    names = chrome.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    return {"/".join(name.split("/")[:3]) for name in names}


def test_docs_show_every_operation_offline(api_without_workers: Api, offline_browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    paths = httpx.get(f"{api_without_workers.url}/openapi.json", timeout=10).json()["paths"]
    operations = sum(len(methods) for methods in paths.values())
    chrome = offline_browser
    chrome.get(f"{api_without_workers.url}/docs")
    wait = WebDriverWait(chrome, 60, poll_frequency=0.2)
    shown = wait.until(lambda d: (n := len(d.find_elements(By.CSS_SELECTOR, ".opblock"))) >= operations and n)
    assert shown == operations
    assert "POST/v1/jobs" in chrome.find_element(By.CSS_SELECTOR, ".opblock").text.replace("\n", "")
    assert loaded_from(chrome) == {api_without_workers.url}
    chrome.get(f"{api_without_workers.url}/redoc")
    wait.until(lambda d: "/v1/batches" in d.find_element(By.TAG_NAME, "body").text)
    # ReDoc's footer tries its maker's logo from cdn.redoc.ly, and hides it when that fails
    assert loaded_from(chrome) - {"https://cdn.redoc.ly"} == {api_without_workers.url}
    icon = httpx.get(f"{api_without_workers.url}/favicon.ico", timeout=10)
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/png"
