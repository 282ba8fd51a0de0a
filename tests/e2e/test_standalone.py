"""`make run`'s path: `mlq standalone` with no services configured starts embedded
PostgreSQL and Redis, the API and a worker, runs the demo, and stops everything."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import httpx

from jobs.modelsfile import load_models_file
from mlq.embedded import free_port
from tests.conftest import MLQ


def test_standalone_demo_on_embedded_servers(tmp_path: Path, data_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("MLQ_DATABASE_URL", "MLQ_REDIS_URL")}
    env["HF_HUB_OFFLINE"] = "1"
    (tmp_path / "models").symlink_to(data_dir / "models", target_is_directory=True)  # reuse built tiny models
    (data_dir / "models").mkdir(exist_ok=True)
    port = free_port()
    result = subprocess.run(
        [MLQ, "standalone", "--port", str(port), "--data-dir", str(tmp_path), "--demo", "--exit-after-demo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "embedded PostgreSQL" in output and "embedded Redis" in output
    assert "pgserver" not in output and "initdb" not in output  # quiet unless --verbose
    before = result.stdout[: result.stdout.index("mlq is up")].strip().splitlines()
    assert len(before) <= 10, before  # what comes before it: where things are, one line each
    assert "what next" in result.stdout and "source .venv/bin/activate" in result.stdout
    # long jobs of several kinds meet in the media worker: two processes, so one does not wait on another
    assert "concurrency: 2" in (tmp_path / "logs" / "worker-media.log").read_text()
    kinds = sorted(load_models_file("demo").kinds)
    lines = [line for line in result.stdout.splitlines() if line.split(" ", 1)[0] in kinds]
    assert {line.split(" ", 1)[0] for line in lines} == set(kinds), result.stdout[-3000:]
    assert all(" succeeded " in line for line in lines), lines
    saved = [Path(line.split("saved ", 1)[1]) for line in result.stdout.splitlines() if " saved " in line]
    assert {p.suffix for p in saved} == {".png", ".wav"} and all(p.stat().st_size > 0 for p in saved)
    state = json.loads((tmp_path / "standalone.json").read_text())
    assert state["api_key"].startswith("mlq_") and oct((tmp_path / "standalone.json").stat().st_mode)[-3:] == "600"
    try:  # everything stopped: the API port no longer answers
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
        raise AssertionError("the API still answers after standalone exited")
    except httpx.HTTPError:
        pass
