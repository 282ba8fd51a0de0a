"""Single-job latency: submit → succeeded for the tiny classifier, one job at a time, three
ways in one run, each on a fresh stack:

- ``post+get``: ``POST /v1/jobs`` then ``GET /v1/jobs/{id}?wait=`` (two round trips);
- ``post?wait``: ``POST /v1/jobs?wait=`` (submit and result in one round trip);
- ``post?wait, batching off``: the same with ``max_batch_size = 1`` for the kind, so the
  worker never fills a slice with other queued jobs: the difference to the previous line is
  what micro-batching adds at idle.

python -m bench latency [--jobs 500] [--torch-threads 1]  (0: the worker's default threads)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from sqlalchemy import text

from bench.loadgen import Client
from bench.stack import running_stack
from jobs.db import make_engine

RESULTS = Path(__file__).with_name("results")
KIND = "text-classification"
BODY = {"kind": KIND, "input": {"text": "这是一条新闻标题"}}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(percentile(values, 0.50), 2),
        "p90": round(percentile(values, 0.90), 2),
        "p99": round(percentile(values, 0.99), 2),
        "mean": round(statistics.mean(values), 2),
    }


def one_mode(*, jobs: int, warmup: int, one_request: bool, batching: bool, torch_threads: int) -> dict[str, Any]:
    # One torch thread for the tiny model unless --torch-threads says otherwise (0: the worker's
    # default, one per usable core at concurrency 1): measured with stamps in the worker before
    # OpenMP's threads slept while waiting (OMP_WAIT_POLICY=PASSIVE, `mlq worker`'s default
    # since #15), one thread instead of two took predict p99 27 -> 4 ms (bench/README.md).
    extra_env: dict[str, str] = {"MLQ_TORCH_THREADS": str(torch_threads)} if torch_threads else {}
    if not batching:
        models = RESULTS / "latency-no-batching.toml"
        models.write_text(
            f'profile = "demo"\n\n[kinds.{KIND}]\nmodel = "builtin:tiny-text-classifier"\nmax_batch_size = 1\n'
        )
        extra_env["MLQ_MODELS"] = str(models)
    with running_stack(kinds=KIND, data_dir=RESULTS / "data", log_dir=RESULTS / "logs", extra_env=extra_env) as stack:
        http = Client(stack.url, key=stack.key)
        client_ms: list[float] = []
        ids: list[str] = []
        for i in range(warmup + jobs):
            started = time.perf_counter()
            if one_request:
                done = http.request("POST", "/v1/jobs?wait=30", BODY)
            else:
                job = http.request("POST", "/v1/jobs", BODY)
                done = http.request("GET", f"/v1/jobs/{job['id']}?wait=30")
            elapsed_ms = (time.perf_counter() - started) * 1000
            assert done["status"] == "succeeded", done
            if i >= warmup:
                client_ms.append(elapsed_ms)
                ids.append(done["id"])
        http.close()
        engine = make_engine(stack.database_url, pool_size=1)
        with engine.connect() as conn:
            rows = conn.execute(text(STEPS_SQL), {"ids": ids}).all()
        engine.dispose()
    return {
        "submit_to_succeeded_ms": summary(client_ms),
        "created_to_finished_in_db_ms": summary([float(r[2]) for r in rows]),
        # on PostgreSQL's clock: created (the INSERT) → claimed (commit, publish, Celery, claim) → finished
        "created_to_claimed_ms": summary([float(r[0]) for r in rows]),
        "claimed_to_finished_ms": summary([float(r[1]) for r in rows]),
    }


STEPS_SQL = """
SELECT EXTRACT(EPOCH FROM started_at - created_at) * 1000, EXTRACT(EPOCH FROM finished_at - started_at) * 1000,
       EXTRACT(EPOCH FROM finished_at - created_at) * 1000
FROM jobs WHERE id = ANY(CAST(:ids AS uuid[]))
"""


def celery_noop(*, jobs: int, warmup: int) -> dict[str, Any]:
    """The issue's anchor, measured in the same run: a bare Celery task round trip over Redis,
    ``noop.delay().get()`` (``bench.naive_celery``; prefork, one process; Redis as broker and
    result backend)."""
    import subprocess
    import sys
    import tempfile

    from bench import naive_celery
    from tests.services import fresh_redis_db, start_services

    root = Path(__file__).resolve().parent.parent
    celery = str(Path(sys.executable).with_name("celery"))
    with (
        tempfile.TemporaryDirectory() as tmp,
        start_services(Path(tmp)) as services,
        fresh_redis_db(services.redis_base_url) as redis_url,
        open(RESULTS / "logs" / "noop-worker.log", "wb") as log,
    ):
        env = dict(os.environ, PYTHONPATH=str(root), HF_HUB_OFFLINE="1", MLQ_DATA_DIR=str(RESULTS / "data"))
        env[naive_celery.BROKER_ENV] = redis_url
        worker = subprocess.Popen(
            [celery, "-A", "bench.naive_celery", "worker", "--queues", naive_celery.QUEUE, "-l", "WARNING",
             "--pool", "prefork", "--concurrency", "1", "--without-gossip", "--without-mingle"],
            cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        naive_celery.app.conf.broker_url = naive_celery.app.conf.result_backend = redis_url
        try:
            naive_celery.noop.delay().get(timeout=180)  # once the worker is up
            client_ms: list[float] = []
            for i in range(warmup + jobs):
                started = time.perf_counter()
                naive_celery.noop.delay().get(timeout=30)
                if i >= warmup:
                    client_ms.append((time.perf_counter() - started) * 1000)
        finally:
            worker.terminate()
            worker.wait(timeout=30)
    return {"submit_to_succeeded_ms": summary(client_ms)}


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(prog="python -m bench latency")
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument(
        "--torch-threads", type=int, default=1, help="the worker's torch threads; 0: its default (the usable cores)"
    )
    args = parser.parse_args(argv)
    RESULTS.mkdir(exist_ok=True)
    modes = {
        "post+get": {"one_request": False, "batching": True},
        "post?wait": {"one_request": True, "batching": True},
        "post?wait, batching off": {"one_request": True, "batching": False},
    }
    results = {
        name: one_mode(jobs=args.jobs, warmup=args.warmup, torch_threads=args.torch_threads, **mode)
        for name, mode in modes.items()
    }
    noop = celery_noop(jobs=args.jobs, warmup=args.warmup)
    on = results["post?wait"]["submit_to_succeeded_ms"]["p50"]
    off = results["post?wait, batching off"]["submit_to_succeeded_ms"]["p50"]
    floor = noop["submit_to_succeeded_ms"]["p50"]
    report = {
        "benchmark": "single-job latency, text-classification (tiny model), sequential",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "jobs": args.jobs,
        "worker_torch_threads": args.torch_threads or "default",
        "modes": results,
        "batching_added_at_idle_p50_ms": round(on - off, 2),
        # the issue's anchor on its machine: a bare Celery round trip p50 4.9 ms, against a target of 15 ms
        "celery_noop_round_trip": noop,
        "post_wait_p50_over_celery_noop_p50": round(on / floor, 2),
        "target_over_anchor": round(15 / 4.9, 2),
        "targets": {"p50_ms": 15, "p99_ms": 40, "batching_added_at_idle_ms": 2},
    }
    (RESULTS / "latency.json").write_text(json.dumps(report, indent=2))
    print(f"worker torch threads: {args.torch_threads or 'the default (the usable cores)'}")
    print(f"{'mode':26} {'p50':>7} {'p90':>7} {'p99':>7} {'mean':>7}   in PostgreSQL p50/p99")
    for name, result in results.items():
        c, s = result["submit_to_succeeded_ms"], result["created_to_finished_in_db_ms"]
        spread = f"{c['p50']:7.2f} {c['p90']:7.2f} {c['p99']:7.2f} {c['mean']:7.2f}"
        print(f"{name:26} {spread}   {s['p50']:.2f}/{s['p99']:.2f}")
    print(f"micro-batching adds {on - off:+.2f} ms at idle (p50)")
    n = noop["submit_to_succeeded_ms"]
    print(f"{'bare Celery no-op round trip':26} {n['p50']:7.2f} {n['p90']:7.2f} {n['p99']:7.2f} {n['mean']:7.2f}")
    print(f"POST ?wait p50 is {on / floor:.2f}x the bare Celery round trip (target: 15 ms on a 4.9 ms anchor, 3.06x)")
    return report


if __name__ == "__main__":
    main()
