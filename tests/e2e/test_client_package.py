"""The Python client as its own distribution (clients/python): built as a wheel, installed in
a fresh virtualenv with httpx alone, it submits a job to a real API and imports nothing of the
server (issue #17: applications got the server's packages jobs, models, producer, workers)."""

from __future__ import annotations

import json
import subprocess
import sys
import venv
from pathlib import Path

from tests.conftest import ROOT, Api

SCRIPT = """
import json, sys
from mlq_client import Client
with Client(sys.argv[1], sys.argv[2]) as mlq:
    job = mlq.submit("embedding", {"text": "from an application"})
server = sorted(m for m in ("jobs", "models", "producer", "workers", "mlq", "torch") if m in sys.modules)
print(json.dumps({"status": job["status"], "server": server}))
"""


def test_the_client_installs_alone_and_talks_to_a_real_api(api_without_workers: Api, key: str, tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT / "clients" / "python")],
        check=True,
        timeout=300,
    )
    [wheel] = wheels.glob("mlq_client-*.whl")
    venv.create(tmp_path / "app", with_pip=True)
    python = tmp_path / "app" / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", str(wheel)], check=True, timeout=300)
    installed = subprocess.run([python, "-m", "pip", "list", "--format=json"], capture_output=True, text=True)
    names = {p["name"].lower() for p in json.loads(installed.stdout)}
    assert "mlq-client" in names and "httpx" in names and "mlq" not in names and "torch" not in names
    run = subprocess.run(
        [python, "-c", SCRIPT, api_without_workers.url, key], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {"status": "queued", "server": []}
