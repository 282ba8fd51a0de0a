"""Fair share (issue #20): a small tenant's dwell time alone and beside another tenant's big
bulk run of the same kind, and the big run's throughput.

    python -m bench fairness [--big 100000] [--small 100]

The tiny text classifier (as ``bench pipeline``), one worker, the defaults a user gets. The
small run is sent once the big one is under way (2 s after it was accepted). Dwell: from
sending the small run to its last line finished. Throughput: the big run's lines over the
time from its acceptance to its last line finished. Run it on the commit before fair claiming
too (a git worktree) to put the two side by side.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from bench.stack import MLQ, Stack, running_stack

KIND = "text-classification"
RESULTS = Path(__file__).with_name("results")


def jsonl(n: int, prefix: str) -> bytes:
    return "\n".join(json.dumps({"custom_id": f"{prefix}{i}", "input": {"text": f"post number {i}"}})
                     for i in range(n)).encode()  # fmt: skip


def send(stack: Stack, key: str, n: int, prefix: str) -> tuple[str, float]:
    started = time.time()
    answer = httpx.post(
        f"{stack.url}/v1/batches",
        params={"kind": KIND},
        content=jsonl(n, prefix),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/jsonl"},
        timeout=600,
    )
    answer.raise_for_status()
    return answer.json()["id"], started


def finished_at(stack: Stack, key: str, batch_id: str, *, every_s: float = 0.05, timeout_s: float = 900) -> float:
    """When the run's last line finished (wall clock, polled every ``every_s``: reading a run's
    status counts its jobs, so the big run is polled once a second, not twenty times)."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
        while time.monotonic() < deadline:
            view = http.get(f"/v1/batches/{batch_id}").json()
            if view["status"] in ("completed", "failed", "cancelled"):
                return time.time()
            time.sleep(every_s)
    raise TimeoutError(f"run {batch_id} not done in {timeout_s}s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench fairness")
    parser.add_argument("--big", type=int, default=100_000)
    parser.add_argument("--small", type=int, default=100)
    args = parser.parse_args(argv)
    env = {"MLQ_MODELS": "demo", "MLQ_LOG_LEVEL": "INFO"}
    results: dict[str, Any] = {}
    with running_stack(
        kinds=KIND, data_dir=RESULTS / "data", log_dir=RESULTS / "logs" / "fairness", extra_env=env,
        worker_args=("--loglevel", "INFO"),
    ) as stack:  # fmt: skip
        small_key = (
            subprocess.run(
                [MLQ, "keys", "create", "--tenant", "small"], env=stack.env, capture_output=True, text=True, check=True
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        warm, _ = send(stack, small_key, 10, "warm")  # the worker loads its model
        finished_at(stack, small_key, warm)
        alone, sent = send(stack, small_key, args.small, "alone")
        results["small alone: dwell s"] = finished_at(stack, small_key, alone) - sent
        big, big_sent = send(stack, stack.key, args.big, "big")
        accepted = time.time()
        time.sleep(2.0)
        beside, sent = send(stack, small_key, args.small, "beside")
        results["small beside the big run: dwell s"] = finished_at(stack, small_key, beside) - sent
        done = finished_at(stack, stack.key, big, every_s=1.0)
        results["big run: accept s"] = accepted - big_sent
        results["big run: lines/s (accepted -> done)"] = args.big / (done - accepted)
    for name, value in results.items():
        print(f"{name:40} {value:10.2f}")
