"""``mlq demo``: submit the example jobs of every configured kind and print their results."""

from __future__ import annotations

import json
from typing import Any

from jobs.kinds import KINDS
from producer.client import Client

DEMO_WAIT_S = 120.0  # first jobs include model loading on a cold worker


def summarize(output: dict[str, Any] | None) -> str:
    """Long vectors are shortened so a result fits on a line or two."""
    if output is None:
        return "-"
    short = {
        key: ([*value[:4], "…"] if isinstance(value, list) and len(value) > 8 else value)
        for key, value in output.items()
    }
    return json.dumps(short, ensure_ascii=False)[:400]


def run_demo(client: Client, *, echo: Any = print) -> list[dict[str, Any]]:
    """Submit every example of every kind the API serves; wait; print and return the jobs."""
    served = [m["kind"] for m in client.models()]
    submitted = [
        client.submit(kind, example, metadata={"source": "mlq demo"})
        for kind in served
        for example in KINDS[kind].examples
    ]
    finished = [client.wait(job["id"], wait_s=DEMO_WAIT_S) for job in submitted]
    for job in finished:
        echo(f"{job['kind']:22} {job['status']:10} input={json.dumps(job['input'], ensure_ascii=False)}")
        if job["error"]:
            echo(f"{'':22} error {job['error']['code']}: {job['error']['message']}")
        else:
            echo(f"{'':22} output={summarize(job['output'])}  [{job['profile']} profile, {job['model']}]")
    return finished
