"""Throughput (issue #5): the same N single-item embedding jobs, the same model, five ways.

python -m bench throughput [--items 2000] [--rounds 3] [--concurrency 2] [--clients 8] [--direct-threads 0]
                           [--modes direct,direct-sorted,naive,mlq,mlq-batch]

- direct: the EmbeddingAdapter in this one process, batches of 32, the faster of 1 and
  all-cores torch threads: the single-process limit as issue #5 defines it.
- direct-sorted: the same batches of 32, each ordered by length and cut into model calls
  as mlq's workers cut a claim (workers.calls.budgeted): the like-for-like limit, since
  that ordering alone makes the model about 1.26x faster on these mixed sentences.
- naive: one plain Celery task per item (bench/naive_celery.py), no database;
  each task pushes its finish time to a Redis list.
- mlq: N single jobs through POST /v1/jobs, `mlq worker --kinds embedding`,
  every result in PostgreSQL.
- mlq-batch: the same N items as one bulk run, POST /v1/batches (JSONL); n/a when the
  API has no /v1/batches route (issue #4).

Modes run one after another, each on its own fresh stack, torn down before the
next, and the whole sequence runs ``--rounds`` times: on a shared machine direct alone
ranged from 352 to 400 items/s within half an hour, so one run's ratio says as much about
the minute as about mlq. The table reports each mode's median round, its range, and
ratios of medians. Seconds are first submit → last item finished (as the worker stamped
it), after a warm-up that loads the models. Results: bench/results/throughput.{json,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import redis
from sqlalchemy import text

from bench.loadgen import Load, post_json
from bench.report import Measured, chart, cpu_by_role, machine, median_round, summary, table
from bench.stack import Stack, running_stack
from jobs.db import make_engine
from jobs.modelsfile import load_models_file
from tests.services import fresh_redis_db, start_services

RESULTS = Path(__file__).with_name("results")
DATA_DIR = RESULTS / "data"
LOG_DIR = RESULTS / "logs"
ROOT = Path(__file__).resolve().parent.parent
CELERY = str(Path(sys.executable).with_name("celery"))
BATCH_SIZE = 32  # direct mode: the models file's max_batch_size for embedding
WARMUP = 4  # items each queued mode runs before timing, so every pool process has loaded its model
POLL_S = 0.05
MODES = ("direct", "direct-sorted", "naive", "mlq", "mlq-batch")


def sentences(n: int, *, seed: int = 5) -> list[str]:
    """Short varied English and Chinese sentences, the same for every run."""
    rng = random.Random(seed)
    english = (
        ["The train", "My neighbour", "This small cafe", "Our new phone", "The weather", "A quiet library"],
        ["arrived late again", "is better than I expected", "needs a software update", "smells of fresh bread"],
        ["this morning", "after the rain", "on Friday", "for the third time", "near the station", ""],
    )
    chinese = (
        ["我的朋友", "这家餐厅", "今天的天气", "新买的手机", "我们的团队", "楼下的超市"],
        ["比想象中好", "又迟到了", "需要改进", "非常安静", "突然涨价了", "很受欢迎"],
        ["。", "，真的。", "，大家都这么说。", "，我不太满意。", "！"],
    )
    out = []
    for i in range(n):
        subject, verb, tail = (rng.choice(part) for part in (chinese if i % 3 == 2 else english))
        out.append(f"{subject}{verb}{tail}" if i % 3 == 2 else f"{subject} {verb} {tail}".strip() + ".")
    return out


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_for(done: Callable[[], bool], *, timeout_s: float, what: str) -> float:
    """Poll every 50 ms; return the time it was first seen done."""
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not done after {timeout_s:.0f}s")
        time.sleep(POLL_S)
    return time.time()


def run_direct(texts: list[str], args: argparse.Namespace, *, sorted_calls: bool = False) -> Measured:
    """In-process batches of 32, with 1 torch thread and with one per core (or --direct-threads); the faster wins.
    On a small shared machine, torch's default of one thread per core can be the slower one.
    ``sorted_calls``: each batch cut into calls by length, as a worker cuts a claim."""
    import torch

    from jobs.kinds import EmbeddingInput
    from models.registry import create_adapter
    from workers.calls import budgeted, call_cost_tokens

    adapter = create_adapter(load_models_file("demo").kinds["embedding"], data_dir=DATA_DIR)
    adapter.load("cpu")
    call_cost = call_cost_tokens(adapter) if sorted_calls else 0.0

    def run(batch: list[str]) -> list[Any]:
        items = list(enumerate(adapter.prepare(EmbeddingInput(text=t)) for t in batch))
        calls = budgeted(adapter, items, call_cost_tokens=call_cost) if sorted_calls else [items]
        return [p for call in calls for p in adapter.predict([item for _, item in call])]

    seconds_by_threads = {}
    for threads in [args.direct_threads] if args.direct_threads else sorted({1, os.cpu_count() or 1}):
        torch.set_num_threads(threads)
        run(texts[:BATCH_SIZE])  # warm-up
        started = time.perf_counter()
        for i in range(0, len(texts), BATCH_SIZE):
            predictions = run(texts[i : i + BATCH_SIZE])
        seconds_by_threads[threads] = time.perf_counter() - started
        assert predictions[-1].output.model_dump()["dimensions"] == 384
    best = min(seconds_by_threads, key=seconds_by_threads.__getitem__)
    detail = {"items_per_s_by_torch_threads": {n: round(len(texts) / s, 2) for n, s in seconds_by_threads.items()}}
    how = "each cut into calls by length" if sorted_calls else "in order"
    note = f"in-process, batches of {BATCH_SIZE} {how}, {best} torch thread(s)"
    return Measured("direct-sorted" if sorted_calls else "direct", len(texts), seconds_by_threads[best], note, detail)


def run_direct_sorted(texts: list[str], args: argparse.Namespace) -> Measured:
    return run_direct(texts, args, sorted_calls=True)


def run_naive(texts: list[str], args: argparse.Namespace) -> Measured:
    from bench import naive_celery

    with (
        tempfile.TemporaryDirectory() as tmp,
        start_services(Path(tmp)) as services,
        fresh_redis_db(services.redis_base_url) as redis_url,
        open(LOG_DIR / "naive-worker.log", "wb") as log,
    ):
        env = dict(
            os.environ,
            PYTHONPATH=str(ROOT),
            HF_HUB_OFFLINE="1",
            TOKENIZERS_PARALLELISM="false",
            MLQ_DATA_DIR=str(DATA_DIR),
            **{
                naive_celery.BROKER_ENV: redis_url,
                naive_celery.THREADS_ENV: str(max(1, (os.cpu_count() or 1) // args.concurrency)),
            },
        )
        command = [CELERY, "-A", "bench.naive_celery", "worker", "--queues", naive_celery.QUEUE, "-l", "WARNING"]
        options = ["--pool", "prefork", "--concurrency", str(args.concurrency), "--without-gossip", "--without-mingle"]
        worker = subprocess.Popen(
            [*command, *options],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        naive_celery.app.conf.broker_url = redis_url
        done = redis.Redis.from_url(redis_url)
        try:
            for t in texts[:WARMUP]:
                naive_celery.embed.delay(t)
            wait_for(lambda: done.llen(naive_celery.DONE_KEY) >= WARMUP, timeout_s=180, what="naive warm-up")
            done.delete(naive_celery.DONE_KEY)
            started = time.time()
            for t in texts:
                naive_celery.embed.delay(t)
            submitted = time.time()
            seen = wait_for(
                lambda: done.llen(naive_celery.DONE_KEY) >= len(texts), timeout_s=60 + len(texts), what="naive run"
            )
            last = max(float(v) for v in done.lrange(naive_celery.DONE_KEY, 0, -1))
        finally:
            stop(worker)
            done.close()
    return Measured(
        "naive",
        len(texts),
        last - started,
        f"Celery task per item, prefork x{args.concurrency}, result: a timestamp pushed to Redis",
        {"submit_s": round(submitted - started, 3), "observed_s": round(seen - started, 3)},
    )


def submit_jobs(stack: Stack, texts: list[str], *, clients: int) -> Load:
    """POST /v1/jobs once per text from ``clients`` keep-alive connections (bench/loadgen.py)."""
    bodies = ({"kind": "embedding", "input": {"text": t}} for t in texts)
    return post_json(stack.url, "/v1/jobs", bodies, key=stack.key, connections=clients)


def submit_singles(stack: Stack, texts: list[str], args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """N single jobs; returns the SQL condition that selects them (and the client's CPU in args)."""
    load = submit_jobs(stack, texts, clients=args.clients)
    args.client_cpu_s = load.cpu_s
    return "id = ANY(CAST(:ids AS uuid[]))", {"ids": [a["id"] for a in load.answers]}


def submit_batch(stack: Stack, texts: list[str], args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """One bulk run of N lines (JSONL) through /v1/batches; returns the SQL condition that selects its jobs."""
    lines = (json.dumps({"custom_id": str(i), "input": {"text": t}}, ensure_ascii=False) for i, t in enumerate(texts))
    response = httpx.post(
        f"{stack.url}/v1/batches",
        params={"kind": "embedding"},
        content="\n".join(lines).encode(),
        headers={"Authorization": f"Bearer {stack.key}", "Content-Type": "application/jsonl"},
        timeout=120,
    )
    response.raise_for_status()
    return "batch_id = CAST(:batch AS uuid)", {"batch": response.json()["id"]}


def mlq_stack(args: argparse.Namespace) -> Any:
    return running_stack(
        kinds="embedding",
        data_dir=DATA_DIR,
        log_dir=LOG_DIR,
        extra_env={"MLQ_MODELS": "demo"},
        worker_args=("--cpu", "--concurrency", str(args.concurrency)),
    )


def has_batches_route(stack: Stack) -> bool:
    paths = httpx.get(f"{stack.url}/openapi.json", timeout=10).json()["paths"]
    return any(p.startswith("/v1/batches") for p in paths)


JOB_TIMES = """
WITH measured AS (SELECT * FROM jobs WHERE {where}),
     claims AS (SELECT max(finished_at) - started_at AS run FROM measured GROUP BY worker, started_at)
SELECT (SELECT count(*) FROM measured WHERE status = 'succeeded'),
       (SELECT EXTRACT(EPOCH FROM max(finished_at)) FROM measured),
       (SELECT EXTRACT(EPOCH FROM max(created_at)) FROM measured),
       (SELECT array_agg(EXTRACT(EPOCH FROM started_at - created_at)) FROM measured),
       (SELECT array_agg(EXTRACT(EPOCH FROM run)) FROM claims)
"""

Submit = Callable[[Stack, list[str], argparse.Namespace], tuple[str, dict[str, Any]]]


def on_mlq(mode: str, texts: list[str], args: argparse.Namespace, *, submit: Submit, note: str) -> Measured:
    """A fresh stack, warmed up with single jobs; then ``submit`` timed to the last of its jobs finished."""
    with mlq_stack(args) as stack:
        if submit is submit_batch and not has_batches_route(stack):
            return Measured(mode, len(texts), None, "n/a: the API has no /v1/batches route (issue #4)")
        with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {stack.key}"}, timeout=200) as http:
            for answer in submit_jobs(stack, texts[:WARMUP], clients=WARMUP).answers:
                assert http.get(f"/v1/jobs/{answer['id']}", params={"wait": 60}).json()["status"] == "succeeded"
        engine = make_engine(stack.database_url, pool_size=1)
        cpu_before = cpu_by_role()
        started = time.time()
        where, params = submit(stack, texts, args)
        submitted = time.time()

        def all_finished() -> bool:
            # Every measured job is committed before ``submit`` returns, and the stack is fresh, so
            # "nothing queued or running" means all finished. It reads the partial indexes of
            # unfinished jobs; a count over the 2,000 ids every 50 ms cost PostgreSQL more CPU
            # than the jobs' own statements, on the cores the run is measured on.
            with engine.connect() as conn:
                return not conn.execute(
                    text("SELECT EXISTS (SELECT 1 FROM jobs WHERE status IN ('queued', 'running'))")
                ).scalar_one()

        seen = wait_for(all_finished, timeout_s=60 + len(texts), what=f"{mode} run")
        cpu_after = cpu_by_role()
        with engine.connect() as conn:
            succeeded, last, last_created, waits, runs = conn.execute(text(JOB_TIMES.format(where=where)), params).one()
        engine.dispose()
    assert succeeded == len(texts), f"only {succeeded} of {len(texts)} jobs succeeded"
    seconds = float(last) - started
    runs_ms = [float(r) * 1000 for r in runs]
    detail = {
        "submit_s": round(submitted - started, 3),  # until the last POST was answered
        "last_created_s": round(float(last_created) - started, 3),
        "observed_s": round(seen - started, 3),  # when the 50 ms COUNT poll saw them all finished
        "queue_wait_ms": summary([float(w) * 1000 for w in waits]),  # created_at -> started_at (claimed)
        "claims": len(runs_ms),  # jobs claimed together (same worker and started_at) count once
        "jobs_per_claim": round(len(texts) / len(runs_ms), 2),
        "claim_run_ms": summary(runs_ms),  # started_at -> last finished_at of the claim: predict and writes
        "worker_busy": round(sum(runs_ms) / 1000 / (seconds * args.concurrency), 3),  # share of pool time in claims
    }
    # Where the CPU went, per job: every process on the machine, by role (the model runs in
    # the worker's pool processes; the rest is what mlq and its services cost around it).
    detail["cpu_ms_per_job"] = {
        role: round(1000 * (cpu_after.get(role, 0.0) - cpu_before.get(role, 0.0)) / len(texts), 2)
        for role in sorted(cpu_after, key=lambda r: -(cpu_after[r] - cpu_before.get(r, 0.0)))
        if cpu_after[role] - cpu_before.get(role, 0.0) > 0.01
    }
    if submit is submit_singles:  # the submitting client shares the cores: what it used
        detail["client_cpu_ms_per_job"] = round(1000 * args.client_cpu_s / len(texts), 3)
    return Measured(mode, len(texts), seconds, note, detail)


def run_mlq(texts: list[str], args: argparse.Namespace) -> Measured:
    note = (
        f"POST /v1/jobs x{len(texts)} ({args.clients} connections), mlq worker prefork x{args.concurrency}, PostgreSQL"
    )
    return on_mlq("mlq", texts, args, submit=submit_singles, note=note)


def run_mlq_batch(texts: list[str], args: argparse.Namespace) -> Measured:
    note = f"one POST /v1/batches (JSONL), mlq worker prefork x{args.concurrency}, PostgreSQL"
    return on_mlq("mlq-batch", texts, args, submit=submit_batch, note=note)


RUNNERS: dict[str, Callable[[list[str], argparse.Namespace], Measured]] = {
    "direct": run_direct,
    "direct-sorted": run_direct_sorted,
    "naive": run_naive,
    "mlq": run_mlq,
    "mlq-batch": run_mlq_batch,
}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench throughput")
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument(
        "--rounds", type=int, default=3, help="times the whole sequence of modes runs; medians reported"
    )
    parser.add_argument("--concurrency", type=int, default=2, help="pool processes of the naive and mlq workers")
    parser.add_argument("--clients", type=int, default=8, help="concurrent HTTP submitters in mlq mode")
    parser.add_argument("--direct-threads", type=int, default=0, help="direct mode torch threads (0: best of 1, all)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}")
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    if unknown := set(modes) - set(MODES):
        parser.error(f"unknown modes {sorted(unknown)}; choose from {', '.join(MODES)}")
    os.environ["HF_HUB_OFFLINE"] = "1"
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    texts = sentences(args.items)
    about = machine(args.items)
    rounds: dict[str, list[Measured]] = {mode: [] for mode in modes}
    for number in range(1, max(1, args.rounds) + 1):
        for mode in modes:  # one at a time; each queued mode tears its stack down before the next starts
            load = os.getloadavg()[0]
            print(
                f"round {number}, {mode}: {args.items} items (load average {load:.2f}) …", file=sys.stderr, flush=True
            )
            measured = RUNNERS[mode](texts, args)
            measured.detail["load_average_1m_before"] = round(load, 2)
            rounds[mode].append(measured)
    results = [median_round(rounds[mode]) for mode in modes]
    # the same round's modes ran minutes apart at most: their ratios, round by round
    for r in results:
        for base in ("direct", "direct-sorted"):
            if base in rounds and r.mode not in ("direct", "direct-sorted"):
                pairs = zip(rounds[r.mode], rounds[base], strict=True)
                r.detail[f"rounds_vs_{base}"] = [round(m.per_s / d.per_s, 3) for m, d in pairs if m.per_s and d.per_s]
    report = {
        "benchmark": "throughput: N single-item embedding jobs (all-MiniLM-L6-v2), items/s per mode",
        "machine": about,
        "settings": {"concurrency": args.concurrency, "clients": args.clients, "warmup": WARMUP, "rounds": args.rounds},
        "results": [
            {
                "mode": r.mode,
                "items": r.items,
                "seconds": round(r.seconds, 3) if r.seconds else None,
                "items_per_s": round(r.per_s, 2) if r.per_s else None,
                "note": r.note,
                **r.detail,
            }
            for r in results
        ],
    }
    (RESULTS / "throughput.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    title = f"embedding throughput, {args.items} items, {os.cpu_count()} cores"
    chart(results, RESULTS / "throughput.png", title=title)
    print(table(results))
    return report


if __name__ == "__main__":
    main()
