"""Single-job latency: submit → succeeded (via ?wait) for the tiny classifier, one job at a time.

python -m bench latency [--jobs 200]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import httpx
from sqlalchemy import text

from bench.stack import running_stack
from jobs.db import make_engine

RESULTS = Path(__file__).with_name("results")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(prog="python -m bench latency")
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args(argv)
    RESULTS.mkdir(exist_ok=True)
    with running_stack(kinds="text-classification", data_dir=RESULTS / "data", log_dir=RESULTS / "logs") as stack:
        http = httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {stack.key}"}, timeout=60)
        body = {"kind": "text-classification", "input": {"text": "这是一条新闻标题"}}
        client_ms: list[float] = []
        ids: list[str] = []
        for i in range(args.warmup + args.jobs):
            started = time.perf_counter()
            job = http.post("/v1/jobs", json=body).json()
            done = http.get(f"/v1/jobs/{job['id']}", params={"wait": 30}).json()
            elapsed_ms = (time.perf_counter() - started) * 1000
            assert done["status"] == "succeeded", done
            if i >= args.warmup:
                client_ms.append(elapsed_ms)
                ids.append(job["id"])
        engine = make_engine(stack.database_url, pool_size=1)
        with engine.connect() as conn:
            server_ms = [
                row[0]
                for row in conn.execute(
                    text(
                        "SELECT EXTRACT(EPOCH FROM finished_at - created_at) * 1000 FROM jobs "
                        "WHERE id = ANY(CAST(:ids AS uuid[]))"
                    ),
                    {"ids": ids},
                )
            ]
        engine.dispose()
    server = [float(v) for v in server_ms]
    report = {
        "benchmark": "single-job latency, text-classification (tiny model), sequential",
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, {__import__('os').cpu_count()} cores",
        "jobs": args.jobs,
        "submit_to_succeeded_ms": {
            "p50": round(percentile(client_ms, 0.50), 2),
            "p90": round(percentile(client_ms, 0.90), 2),
            "p99": round(percentile(client_ms, 0.99), 2),
            "mean": round(statistics.mean(client_ms), 2),
        },
        "created_to_finished_in_db_ms": {
            "p50": round(percentile(server, 0.50), 2),
            "p99": round(percentile(server, 0.99), 2),
        },
    }
    (RESULTS / "latency.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
