"""The pipeline's own cost (issue #15): the tiny text classifier, which costs a fraction of a
millisecond an item in-process, so nearly all the time measured is mlq's; beside a bare
Celery no-op task in the same run.

    python -m bench pipeline [--lines 20000] [--singles 2000] [--clients 16] [--noops 2000] [--modes ...]

- celery-noop: ``--noops`` bare ``noop.delay()`` published, then each ``.get()``: JSON,
  Redis as broker and result backend, one prefork process (the floor of any Celery design).
- model: the classifier's adapter in-process on the same texts, in calls of the kind's
  ``max_batch_size``, with a pool process's torch threads and OpenMP wait policy: what the
  model alone costs an item.
- http-floor: a bare FastAPI route under uvicorn (``bench/floor_app.py``) given the single
  jobs' load: what one HTTP request costs any Python front before its own work.
- mlq-bulk: one ``POST /v1/batches`` of ``--lines`` lines; accepted -> all finished.
- mlq-single: ``--singles`` jobs from ``--clients`` keep-alive clients, each ``POST
  /v1/jobs?wait=60``.
- mlq-bulk-free, mlq-single-free: the same with a classifier that costs nothing
  (``bench/free_model.py``): mlq's own ceiling, what is left where the model is free (a GPU).

Both mlq modes run the defaults a user gets (``mlq worker --kinds text-classification``: one
pool process; the API's settings as shipped) and report CPU per job of every process by role,
and that CPU less the model's own: what mlq costs around the model.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import redis
from sqlalchemy import text

from bench import free_model
from bench.loadgen import post_json
from bench.report import cpu_by_role
from bench.stack import running_stack
from bench.throughput import CELERY, DATA_DIR, LOG_DIR, ROOT, sentences, stop, wait_for
from jobs.db import make_engine
from jobs.modelsfile import load_models_file
from mlq.embedded import free_port
from tests.services import fresh_redis_db, start_services

KIND = "text-classification"
RESULTS = Path(__file__).with_name("results")


def celery_noop(n: int) -> dict[str, Any]:
    from bench import naive_celery

    with (
        tempfile.TemporaryDirectory() as tmp,
        start_services(Path(tmp)) as services,
        fresh_redis_db(services.redis_base_url) as redis_url,
        open(LOG_DIR / "noop-worker.log", "wb") as log,
    ):
        env = dict(os.environ, PYTHONPATH=str(ROOT), MLQ_DATA_DIR=str(DATA_DIR), **{naive_celery.BROKER_ENV: redis_url})
        command = [CELERY, "-A", "bench.naive_celery", "worker", "--queues", naive_celery.QUEUE, "-l", "WARNING"]
        options = ["--pool", "prefork", "--concurrency", "1", "--without-gossip", "--without-mingle"]
        worker = subprocess.Popen([*command, *options], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        naive_celery.app.conf.broker_url = redis_url
        naive_celery.app.conf.result_backend = redis_url
        try:
            naive_celery.noop.delay().get(timeout=180)  # the worker is up
            cpu_before = cpu_by_role()
            started = time.perf_counter()
            results = [naive_celery.noop.delay() for _ in range(n)]
            for result in results:
                result.get(timeout=120)
            seconds = time.perf_counter() - started
            cpu = per_job(cpu_before, cpu_by_role(), n)
        finally:
            stop(worker)
            redis.Redis.from_url(redis_url).flushdb()
    return {"mode": "celery-noop", "items": n, "seconds": seconds, "cpu_ms_per_job": cpu}


def http_floor(texts: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """bench/floor_app.py under uvicorn as ``mlq api`` runs it, the single jobs' load (``?wait``
    and the same bodies from ``--clients`` connections): CPU a request of a bare FastAPI route."""
    import psutil

    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "bench.floor_app:create_app", "--factory", "--port", str(port)]
    with open(LOG_DIR / "http-floor.log", "wb") as log:
        server = subprocess.Popen(
            [*command, "--no-access-log", "--log-level", "warning"],
            cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_for(lambda: _answers(f"http://127.0.0.1:{port}/docs"), timeout_s=60, what="the floor app")
            bodies = [{"kind": KIND, "input": {"text": t}} for t in texts]
            post_json(f"http://127.0.0.1:{port}", "/v1/jobs?wait=60", bodies[:200], key="-", connections=args.clients)
            before, started = psutil.Process(server.pid).cpu_times(), time.time()
            load = post_json(f"http://127.0.0.1:{port}", "/v1/jobs?wait=60", bodies, key="-", connections=args.clients)
            seconds, after = time.time() - started, psutil.Process(server.pid).cpu_times()
        finally:
            stop(server)
    server_ms = 1000 * (after.user + after.system - before.user - before.system) / len(texts)
    cpu = {"uvicorn + FastAPI": round(server_ms, 3), "benchmark client": round(1000 * load.cpu_s / len(texts), 3)}
    return {"mode": "http-floor", "items": len(texts), "seconds": seconds, "cpu_ms_per_job": cpu}


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def model_alone(texts: list[str]) -> dict[str, Any]:
    """The adapter in this process with the torch threads and OpenMP wait policy a worker gets
    by default, calls of max_batch_size: CPU ms an item for prepare and predict, as a worker runs them."""
    from workers.placement import WAIT_POLICY_ENV, default_torch_threads, let_waiting_threads_sleep

    assert "torch" not in sys.modules, "torch loaded before the model mode: its OpenMP read the wait policy already"
    let_waiting_threads_sleep()  # as `mlq worker` does for its pool processes
    import torch

    from jobs.kinds import TextClassificationInput
    from models.registry import create_adapter

    threads = default_torch_threads(concurrency=1)
    torch.set_num_threads(threads)
    spec = load_models_file("demo").kinds[KIND]
    adapter = create_adapter(spec, data_dir=DATA_DIR)
    adapter.load("cpu")
    size = spec.max_batch_size
    # prepare_many where the adapter has it (before issue #15 it had prepare alone)
    prepare = getattr(adapter, "prepare_many", None) or (lambda items: [adapter.prepare(i) for i in items])
    adapter.predict(prepare([TextClassificationInput(text=t) for t in texts[:size]]))  # warm-up
    started = time.process_time()
    for i in range(0, len(texts), size):
        adapter.predict(prepare([TextClassificationInput(text=t) for t in texts[i : i + size]]))
    cpu_ms = 1000 * (time.process_time() - started) / len(texts)
    return {
        "mode": "model",
        "items": len(texts),
        "cpu_ms_per_item": cpu_ms,
        "torch_threads": threads,
        "omp_wait_policy": os.environ[WAIT_POLICY_ENV],
    }


def per_job(before: dict[str, float], after: dict[str, float], n: int) -> dict[str, float]:
    return {
        role: round(1000 * (after[role] - before.get(role, 0.0)) / n, 3)
        for role in sorted(after, key=lambda r: -(after[r] - before.get(r, 0.0)))
        if after[role] - before.get(role, 0.0) > 0.005
    }


def on_mlq(mode: str, texts: list[str], args: argparse.Namespace) -> dict[str, Any]:
    defaults = {"MLQ_MODELS": "demo", "MLQ_LOG_LEVEL": "INFO"}  # the log level a user gets, not the stack's WARNING
    if mode.endswith("-free"):  # the models file names bench/free_model.py's adapter, imported from ROOT
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        defaults.update(MLQ_MODELS=str(free_model.models_file(DATA_DIR)), PYTHONPATH=path)
    with running_stack(
        kinds=KIND, data_dir=DATA_DIR, log_dir=LOG_DIR / mode, extra_env=defaults, worker_args=("--loglevel", "INFO")
    ) as stack:
        headers = {"Authorization": f"Bearer {stack.key}"}
        with httpx.Client(base_url=stack.url, headers=headers, timeout=200) as http:
            warm = http.post("/v1/jobs", params={"wait": 60}, json={"kind": KIND, "input": {"text": "warm"}}).json()
            assert warm["status"] == "succeeded", warm
        engine = make_engine(stack.database_url, pool_size=1)
        cpu_before = cpu_by_role()
        started = time.time()
        if mode.startswith("mlq-bulk"):
            lines = "\n".join(json.dumps({"custom_id": str(i), "input": {"text": t}}) for i, t in enumerate(texts))
            answer = httpx.post(
                f"{stack.url}/v1/batches",
                params={"kind": KIND},
                content=lines.encode(),
                headers={**headers, "Content-Type": "application/jsonl"},
                timeout=300,
            )
            answer.raise_for_status()
            accepted_s = time.time() - started
        else:
            load = post_json(
                stack.url, "/v1/jobs?wait=60", ({"kind": KIND, "input": {"text": t}} for t in texts),
                key=stack.key, connections=args.clients,
            )  # fmt: skip
            assert all(a["status"] == "succeeded" for a in load.answers), "a single job did not succeed"
            accepted_s = None

        def all_finished() -> bool:
            with engine.connect() as conn:
                return not conn.execute(
                    text("SELECT EXISTS (SELECT 1 FROM jobs WHERE status IN ('queued', 'running'))")
                ).scalar_one()

        wait_for(all_finished, timeout_s=600, what=mode)
        cpu_after = cpu_by_role()
        with engine.connect() as conn:
            done, last = conn.execute(
                text("SELECT count(*), EXTRACT(EPOCH FROM max(finished_at)) FROM jobs WHERE status = 'succeeded'")
            ).one()
        engine.dispose()
    assert done == len(texts) + 1, f"{done - 1} of {len(texts)} succeeded"
    return {
        "mode": mode,
        "items": len(texts),
        "seconds": float(last) - started,
        "accepted_s": accepted_s,
        "cpu_ms_per_job": per_job(cpu_before, cpu_after, len(texts)),
        "model_costs": not mode.endswith("-free"),
    }


def report(results: list[dict[str, Any]]) -> str:
    noop = next((r for r in results if r["mode"] == "celery-noop"), None)  # not run: no ratios
    model = next((r for r in results if r["mode"] == "model"), None)  # not run: "outside the model" is not known
    model_ms = model["cpu_ms_per_item"] if model else float("nan")
    noop_rate = noop["items"] / noop["seconds"] if noop else float("nan")
    lines = []
    if model:
        lines.append(
            f"model alone: {model_ms:.3f} CPU ms an item (in-process, {model['torch_threads']} torch threads, "
            f"OMP_WAIT_POLICY={model['omp_wait_policy']})"
        )
    for r in results:
        if "seconds" not in r:
            continue
        rate = r["items"] / r["seconds"]
        cpu = r["cpu_ms_per_job"]
        total = sum(v for k, v in cpu.items() if k != "benchmark client")
        outside = total - (model_ms if r.get("model_costs") else 0.0)
        accepted = f", accepted in {r['accepted_s']:.2f} s" if r.get("accepted_s") else ""
        lines.append(
            f"{r['mode']:15} {r['items']:>6} in {r['seconds']:6.2f} s = {rate:7.0f}/s "
            f"({rate / noop_rate:5.2f}x the Celery no-op){accepted}; CPU ms a job, all but the client: "
            f"{total:.3f}, outside the model: {outside:.3f}"
        )
        lines.append(" " * 16 + ", ".join(f"{role} {ms}" for role, ms in cpu.items()))
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench pipeline")
    parser.add_argument("--lines", type=int, default=20_000)
    parser.add_argument("--singles", type=int, default=2_000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--noops", type=int, default=2_000)
    parser.add_argument("--modes", default="celery-noop,model,mlq-bulk,mlq-single,mlq-bulk-free,mlq-single-free")
    args = parser.parse_args(argv)
    for folder in (RESULTS, DATA_DIR, LOG_DIR):
        folder.mkdir(parents=True, exist_ok=True)
    texts = sentences(max(args.lines, args.singles))
    results: list[dict[str, Any]] = []
    for mode in args.modes.split(","):
        print(f"{mode} …", flush=True)
        if mode == "celery-noop":
            results.append(celery_noop(args.noops))
        elif mode == "http-floor":
            results.append(http_floor(texts[: args.singles], args))
        elif mode == "model":
            results.append(model_alone(texts[: args.lines]))
        elif mode.startswith("mlq-bulk"):
            results.append(on_mlq(mode, texts[: args.lines], args))
        elif mode.startswith("mlq-single"):
            results.append(on_mlq(mode, texts[: args.singles], args))
        else:
            parser.error(f"--modes: unknown mode {mode!r}")
    (RESULTS / "pipeline.json").write_text(json.dumps(results, indent=2))
    print(report(results))
