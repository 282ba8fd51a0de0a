"""``mlq demo``: submit example jobs of every served kind and print their results.

Text examples come from the kinds' schemas (``jobs.kinds``); audio and image
examples are files in ``mlq/assets``. Generated images and audio are saved
beside the data folder and their paths printed.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import httpx

from jobs.kinds import KINDS
from producer.client import Client

DEMO_WAIT_S = 300.0  # the first jobs wait for a cold worker to build and load the demo models
ASSETS = Path(__file__).with_name("assets")


def asset(name: str) -> dict[str, str]:
    return {"base64": base64.b64encode((ASSETS / name).read_bytes()).decode()}


def examples(kind: str) -> list[dict[str, Any]]:
    """The demo inputs of ``kind``; binary kinds get the bundled files."""
    files: dict[str, list[dict[str, Any]]] = {
        "speech-recognition": [{"audio": asset("speech.wav")}],
        "image-classification": [{"image": asset("dog.png"), "top_k": 3}],
    }
    return files.get(kind, list(KINDS[kind].examples))


def summarize(output: dict[str, Any] | None) -> str:
    """Long vectors are shortened so a result fits on a line or two."""
    if output is None:
        return "-"
    short = {
        key: ([*value[:4], "…"] if isinstance(value, list) and len(value) > 8 else value)
        for key, value in output.items()
    }
    return json.dumps(short, ensure_ascii=False)[:400]


def shown_input(payload: dict[str, Any]) -> str:
    return json.dumps(
        {k: ("<file>" if isinstance(v, dict) and "artifact" in v else v) for k, v in payload.items()},
        ensure_ascii=False,
    )[:200]


def save_outputs(client: Client, job: dict[str, Any], out_dir: Path) -> list[Path]:
    """Download the generated files of ``job`` (not its uploaded inputs)."""
    saved = []
    for artifact in client.artifacts(job["id"]):
        if artifact["name"].startswith("input-"):
            continue
        path = out_dir / f"{job['kind']}-{job['id'][:8]}-{artifact['name']}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(client.artifact(job["id"], artifact["name"]))
        saved.append(path)
    return saved


def run_demo(client: Client, *, out_dir: Path, echo: Any = print) -> list[dict[str, Any]]:
    """Submit the examples of every kind the API serves; wait; print and return the jobs."""
    served = [m["kind"] for m in client.models()]
    submitted = [
        client.submit(kind, example, metadata={"source": "mlq demo"}) for kind in served for example in examples(kind)
    ]
    finished = []
    for job in submitted:
        try:
            finished.append(client.wait(job["id"], wait_s=DEMO_WAIT_S))
        except httpx.TimeoutException:
            finished.append({**job, "status": "timed out waiting"})
    for job in finished:
        echo(f"{job['kind']:22} {job['status']:10} input={shown_input(job['input'])}")
        if job.get("error"):
            echo(f"{'':22} error {job['error']['code']}: {job['error']['message']}")
        elif job["status"] == "succeeded":
            echo(f"{'':22} output={summarize(job['output'])}  [{job['profile']} profile, {job['model']}]")
            for path in save_outputs(client, job, out_dir):
                echo(f"{'':22} saved {path}")
    return finished
