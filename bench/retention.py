"""Retention with millions of finished rows (issue #18, part 4).

Two stacks side by side on the same PostgreSQL server (each an API on a database of its own,
no worker; claims are made here with ``jobs.lifecycle.claim``, as a worker makes them):
``empty`` keeps only what the measurements add, ``full`` gets ``--rows`` finished jobs
(default 5,000,000) from ``INSERT … SELECT generate_series`` (time-ordered ids, 31 to 90 days
old, 1 % with an artifact row, 1 % with a sent webhook), then VACUUM ANALYZE and a checkpoint,
as a table that grew over a month would be. Requests alternate between the two, one at a
time, so both see the same load from the rest of the machine (on a shared machine that load
moves p50 by 3x within minutes):

1. ``loaded``: submit (``POST /v1/jobs``), list (``GET /v1/jobs``) and claim, on each;
2. ``pruning``: submits one after another on ``full`` while ``mlq prune`` (a real process,
   transactions of ``MLQ_PRUNE_BATCH_ROWS`` jobs, ``MLQ_PRUNE_PAUSE_S`` between them) removes
   every generated row; the prune is stopped (SIGSTOP) every other ``--window-s``, so
   submits while it runs are compared with submits in its pauses under the same other load,
   and with ``--baseline-s`` of submits before it started. Target: p99 at most 20 % more.
   ``--measure-s``: measured this long, then the prune is ended (SIGTERM) and what it left is
   pruned by another with no pause and nothing beside it (5,000,000 rows at the default pause
   take about 1.5 hours here, 3 with the stopped windows);
3. ``pruned``: as 1, on the pruned table before it is vacuumed.

python -m bench retention [--rows 5000000] [--requests 400] [--baseline-s 30] [--window-s 1] [--measure-s 0]
    [--no-prune]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from bench.latency import percentile, summary
from bench.loadgen import Client
from bench.stack import MLQ, Stack, running_stack
from jobs import lifecycle
from jobs.db import make_engine, make_sessionmaker
from jobs.settings import Settings

RESULTS = Path(__file__).with_name("results")
KIND = "text-classification"
BODY = {"kind": KIND, "input": {"text": "a headline to classify"}}
LOAD_CHUNK = 250_000  # rows per INSERT statement (its own transaction)
P99_TARGET = 1.20  # pruning may raise p99 submit latency by at most 20 %

# Finished jobs of one tenant, created 90 to 31 days ago in id order (a version-7 id made of
# created_at's milliseconds), with an artifact row and a sent webhook on about 1 % each.
LOAD_SQL = """
WITH made AS (
    SELECT i, now() - interval '90 days' + (i - 1) * CAST(:step_s AS float8) * interval '1 second' AS t
    FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS i
), ins AS (
    INSERT INTO jobs (id, tenant_id, kind, model, profile, status, priority, input, output, metadata, attempt,
                      max_attempts, worker, created_at, started_at, finished_at, updated_at)
    SELECT CAST(lpad(to_hex(CAST(floor(extract(epoch FROM t) * 1000) AS bigint)), 12, '0') || '7'
                || substr(md5(CAST(i AS text)), 1, 3) || '8' || substr(md5(CAST(i AS text)), 4, 15) AS uuid),
           :tenant, 'text-classification', 'builtin:tiny-text-classifier', 'demo', 'succeeded', 5,
           jsonb_build_object('text', 'headline number ' || i), '{"label": "positive", "score": 0.93}', '{}',
           1, 3, 'bench-worker', t, t + interval '5 ms', t + interval '25 ms', t + interval '25 ms'
    FROM made
    RETURNING id, created_at
), arts AS (
    INSERT INTO artifacts (id, job_id, name, content_type, size_bytes, sha256, uri, created_at)
    SELECT gen_random_uuid(), id, 'image.png', 'image/png', 3, repeat('0', 64), 'file:///nonexistent/' || id,
           created_at
    FROM ins WHERE get_byte(uuid_send(id), 15) < 3
), hooks AS (
    INSERT INTO webhook_deliveries (id, tenant_id, job_id, url, status, attempts, created_at, delivered_at)
    SELECT gen_random_uuid(), :tenant, id, 'https://example.com/hook', 'delivered', 1, created_at, created_at
    FROM ins WHERE get_byte(uuid_send(id), 14) < 3
)
SELECT count(*) FROM ins
"""


@dataclass
class Side:
    """One of the two stacks, with what the measurements need of it."""

    name: str
    stack: Stack
    engine: Engine
    http: Client
    ids: list[uuid.UUID] = field(default_factory=list)  # submitted, to be claimed

    @property
    def sessions(self) -> sessionmaker[Session]:
        return make_sessionmaker(self.engine)

    def submit(self) -> float:
        started = time.perf_counter()
        job = self.http.request("POST", "/v1/jobs", BODY)
        self.ids.append(uuid.UUID(job["id"]))
        return (time.perf_counter() - started) * 1000

    def list(self) -> float:
        started = time.perf_counter()
        page = self.http.request("GET", "/v1/jobs?limit=50")
        assert page["data"], page
        return (time.perf_counter() - started) * 1000

    def claim(self) -> float:
        """As the runner claims: its message's ids, filled from the queue; finished at once."""
        started = time.perf_counter()
        taken = lifecycle.claim_jobs(
            self.sessions, job_ids=[self.ids.pop()], kind=KIND, worker="bench", lease_s=60, fill_to=1
        )
        ms = (time.perf_counter() - started) * 1000
        lifecycle.record(
            self.sessions,
            outcomes=[lifecycle.Outcome(c.id, c.attempt, output={"label": "x"}, follow_up=c.follow_up) for c in taken],
        )
        return ms


def measure(sides: list[Side], *, requests: int) -> dict[str, Any]:
    """Submit, list and claim ``requests`` times each on every side, the sides taking turns."""
    for side in sides:
        side.http.close()  # an idle keep-alive connection is closed by the API after 5 s: a fresh one
        for _ in range(20):  # warm the API's connections and caches
            side.submit()
            side.list()
    found: dict[str, Any] = {side.name: {} for side in sides}
    for op in ("submit", "list", "claim"):
        times: dict[str, list[float]] = {side.name: [] for side in sides}
        for _ in range(requests):
            for side in sides:
                times[side.name].append(getattr(side, op)())
        for side in sides:
            found[side.name][f"{op}_ms"] = summary(times[side.name])
    return found


def load(engine: Engine, *, tenant: uuid.UUID, rows: int) -> dict[str, Any]:
    started = time.monotonic()
    step_s = (59 * 86_400) / max(1, rows)  # spread over 90 to 31 days ago: all past a 30-day retention
    done = 0
    for lo in range(1, rows + 1, LOAD_CHUNK):
        hi = min(rows, lo + LOAD_CHUNK - 1)
        with engine.begin() as conn:
            done += conn.execute(text(LOAD_SQL), {"lo": lo, "hi": hi, "step_s": step_s, "tenant": tenant}).scalar_one()
        print(f"  loaded {done:,} rows in {time.monotonic() - started:.0f}s", flush=True)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM (ANALYZE) jobs, artifacts, webhook_deliveries"))
        try:  # write the load's pages out now, not during the measurements (a superuser's right)
            conn.execute(text("CHECKPOINT"))
        except Exception as exc:
            print(f"  no checkpoint: {exc}", flush=True)
    print(f"  vacuumed and analyzed in {time.monotonic() - started:.0f}s", flush=True)
    return {"rows": done, "load_s": round(time.monotonic() - started, 1), **sizes(engine)}


def sizes(engine: Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT pg_total_relation_size('jobs'), pg_relation_size('jobs'), "
                "(SELECT count(*) FROM artifacts), (SELECT count(*) FROM webhook_deliveries), "
                "(SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'jobs')"
            )
        ).one()
    return {"jobs_total_mb": row[0] >> 20, "jobs_heap_mb": row[1] >> 20, "artifact_rows": row[2],
            "webhook_rows": row[3], "jobs_dead_tuples": row[4]}  # fmt: skip


def submits_while(side: Side, *, seconds: float) -> list[float]:
    """Submit one after another for ``seconds``."""
    deadline = time.monotonic() + seconds
    latencies: list[float] = []
    while time.monotonic() < deadline:
        latencies.append(side.submit())
    return latencies


def submits_beside(
    side: Side, proc: subprocess.Popen[str], *, window_s: float, measure_s: float
) -> tuple[list[float], list[float], float]:
    """Submit one after another until ``proc`` exits (or ``measure_s`` passed, when not 0),
    stopping it (SIGSTOP) every other ``window_s``: submits while it runs and while it is
    stopped, under the same other load. ``proc`` is left running."""
    running: list[float] = []
    paused: list[float] = []
    pruning, switch_at, stopped_s = True, time.monotonic() + window_s, 0.0
    deadline = time.monotonic() + measure_s if measure_s else float("inf")
    while proc.poll() is None and time.monotonic() < deadline:
        if time.monotonic() >= switch_at:
            pruning, switch_at = not pruning, time.monotonic() + window_s
            proc.send_signal(signal.SIGCONT if pruning else signal.SIGSTOP)
            stopped_s += window_s if pruning else 0  # a stop counts once it ends
        (running if pruning else paused).append(side.submit())
    if not pruning:
        stopped_s += time.monotonic() - (switch_at - window_s)
        proc.send_signal(signal.SIGCONT)
    return running, paused, stopped_s


def generated_left(side: Side) -> int:
    with side.engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM jobs WHERE worker = 'bench-worker'")).scalar_one())


def prune_the_rest(side: Side, env: dict[str, str]) -> dict[str, Any]:
    """What the measured prune left, pruned with no pause and no submits beside it."""
    with open(RESULTS / "logs" / "retention-prune-rest.log", "w") as err:
        out = subprocess.run(
            [MLQ, "prune"], env={**env, "MLQ_PRUNE_PAUSE_S": "0"}, stdout=subprocess.PIPE, stderr=err, text=True,
            check=True,
        ).stdout  # fmt: skip
    done = json.loads(out)
    return {**done, "pause_s": 0, "rows_per_s": round(done["jobs"] / max(0.001, done["seconds"]))}


def prune_under_load(
    side: Side, *, baseline_s: float, window_s: float, pause_s: float, batch_rows: int, measure_s: float
) -> dict[str, Any]:
    side.http.close()
    before = submits_while(side, seconds=baseline_s)
    env = {**side.stack.env, "MLQ_RETENTION_DAYS": "30", "MLQ_PRUNE_PAUSE_S": str(pause_s), "MLQ_LOG_LEVEL": "INFO"}
    left = generated_left(side)
    started = time.monotonic()
    rest = None
    with open(RESULTS / "logs" / "retention-prune.log", "w") as err:
        proc = subprocess.Popen([MLQ, "prune"], env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        during, paused, stopped_s = submits_beside(side, proc, window_s=window_s, measure_s=measure_s)
        ran_s = time.monotonic() - started - stopped_s
        if proc.poll() is None:  # --measure-s: the measured part is over
            proc.terminate()
        out, _ = proc.communicate()
    if proc.returncode not in (0, -signal.SIGTERM):
        raise RuntimeError(f"mlq prune exited {proc.returncode}; see {RESULTS / 'logs' / 'retention-prune.log'}")
    pruned = {"jobs": left - generated_left(side), **(json.loads(out) if out else {}), "seconds": round(ran_s, 1)}
    if generated_left(side):
        rest = prune_the_rest(side, env)
    p99 = {name: percentile(values, 0.99) for name, values in (("before", before), ("during", during),
                                                                 ("paused", paused))}  # fmt: skip
    return {
        "pruned": pruned,  # while measured (--measure-s: a part, ended by SIGTERM)
        "rest": rest,  # what it left, pruned with no pause and nothing beside it
        "prune_pause_s": pause_s,
        "wall_s": round(time.monotonic() - started, 1),
        "prune_batch_rows": batch_rows,
        "rows_per_s": round(pruned["jobs"] / max(0.001, ran_s)),  # while not stopped
        "submit_before_ms": {**summary(before), "n": len(before)},
        "submit_while_pruning_ms": {**summary(during), "n": len(during)},
        "submit_while_paused_ms": {**summary(paused), "n": len(paused)},
        "p99_pruning_over_paused": round(p99["during"] / p99["paused"], 3),
        "p99_pruning_over_before": round(p99["during"] / p99["before"], 3),
        "p99_within_target": p99["during"] <= P99_TARGET * p99["paused"],  # the pairs under the same other load
    }


def finish_queued(side: Side) -> None:
    """The submits of the prune's measurement leave queued jobs: finished, so both sides hold
    the same queue again."""
    with side.engine.begin() as conn:
        conn.execute(text("UPDATE jobs SET status = 'succeeded', finished_at = now() WHERE status = 'queued'"))
    side.ids.clear()


def compared(found: dict[str, Any]) -> dict[str, Any]:
    """Each side's summaries, and full over empty for each operation's p50 and p99."""
    ratio = {
        f"{op}_{q}": round(found["full"][op][q] / found["empty"][op][q], 2)
        for op in found["empty"]
        for q in ("p50", "p99")
    }
    return {**found, "full_over_empty": ratio}


def side(name: str, stack: Stack) -> Side:
    return Side(name, stack, make_engine(stack.database_url, pool_size=2), Client(stack.url, key=stack.key))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench retention")
    parser.add_argument("--rows", type=int, default=5_000_000, help="finished jobs to generate")
    parser.add_argument("--requests", type=int, default=400, help="submits, lists and claims per measurement")
    parser.add_argument("--baseline-s", type=float, default=30, help="seconds of submits before pruning starts")
    parser.add_argument("--window-s", type=float, default=1, help="prune runs and stops in turns this long")
    parser.add_argument("--pause-s", type=float, default=None, help="MLQ_PRUNE_PAUSE_S (default: the setting's)")
    parser.add_argument("--batch-rows", type=int, default=None, help="MLQ_PRUNE_BATCH_ROWS (default: the setting's)")
    parser.add_argument("--no-prune", action="store_true", help="measure the loaded tables only (step 1)")
    parser.add_argument(
        "--measure-s", type=float, default=0,
        help="measure submits beside the prune this long, then prune the rest with no pause (0: the whole prune)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.measure_s and args.measure_s < 10 * args.window_s:
        parser.error("--measure-s must be at least ten windows (--window-s), to have submits on both sides")
    RESULTS.mkdir(exist_ok=True)
    defaults = Settings()
    pause_s = defaults.prune_pause_s if args.pause_s is None else args.pause_s
    batch_rows = defaults.prune_batch_rows if args.batch_rows is None else args.batch_rows
    # no submission limits: the measurements submit faster than the default 6,000 a minute
    env = {"MLQ_JOBS_PER_MINUTE": "0", "MLQ_MAX_ACTIVE_JOBS_PER_KIND": "0", "MLQ_PRUNE_BATCH_ROWS": str(batch_rows)}
    data_dir, logs = RESULTS / "retention-data", RESULTS / "logs"
    with (
        running_stack(kinds=None, data_dir=data_dir, log_dir=logs / "empty", extra_env=env) as empty_stack,
        running_stack(kinds=None, data_dir=data_dir, log_dir=logs / "full", extra_env=env) as full_stack,
    ):
        empty, full = side("empty", empty_stack), side("full", full_stack)
        with full.engine.connect() as conn:
            tenant = conn.execute(text("SELECT id FROM tenants WHERE name = 'bench'")).scalar_one()
        print(f"generating {args.rows:,} finished jobs", flush=True)
        loaded_sizes = load(full.engine, tenant=tenant, rows=args.rows)
        print("measuring both tables, in turns", flush=True)
        loaded = compared(measure([empty, full], requests=args.requests))
        pruning: dict[str, Any] | None = None
        pruned: dict[str, Any] | None = None
        after_sizes: dict[str, Any] | None = None
        if not args.no_prune:
            print("pruning them under a submit load", flush=True)
            pruning = prune_under_load(
                full, baseline_s=args.baseline_s, window_s=args.window_s, pause_s=pause_s, batch_rows=batch_rows,
                measure_s=args.measure_s,
            )  # fmt: skip
            finish_queued(full)
            after_sizes = sizes(full.engine)
            print("measuring both tables again, in turns", flush=True)
            pruned = compared(measure([empty, full], requests=args.requests))
        for each in (empty, full):
            each.http.close()
            each.engine.dispose()
    report = {
        "benchmark": "retention: submit, GET /v1/jobs and claim with millions of finished rows; pruning them",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "rows": args.rows,
        "requests": args.requests,
        "loaded": loaded,
        "loaded_sizes": loaded_sizes,
        "pruning": pruning,
        "pruned": pruned,
        "after_prune_sizes": after_sizes,
    }
    (RESULTS / "retention.json").write_text(json.dumps(report, indent=2))
    show(report)
    return report


def show(report: dict[str, Any]) -> None:
    print(f"{'ms, one at a time':24} {'submit p50/p99':>16} {'list p50/p99':>16} {'claim p50/p99':>16}")
    for phase, label in (("loaded", f"{report['rows']:,} rows"), ("pruned", "pruned")):
        if report[phase] is None:  # --no-prune
            continue
        for name in ("empty", "full"):
            row = report[phase][name]
            cells = [f"{row[m]['p50']:.2f}/{row[m]['p99']:.2f}" for m in ("submit_ms", "list_ms", "claim_ms")]
            print(f"{(label if name == 'full' else 'empty beside it'):24} {cells[0]:>16} {cells[1]:>16} {cells[2]:>16}")
    if report["pruning"] is None:
        return
    pruning, done = report["pruning"], report["pruning"]["pruned"]
    b, d, q = (pruning[f"submit_{w}_ms"] for w in ("before", "while_pruning", "while_paused"))
    print(
        f"pruned {done['jobs']:,} jobs in transactions of {pruning['prune_batch_rows']} rows, "
        f"{pruning['prune_pause_s']}s pause between ({pruning['rows_per_s']:,} rows/s); "
        f"submit p99: {b['p99']:.2f} ms before (n={b['n']}), "
        f"{d['p99']:.2f} ms while pruning (n={d['n']}), {q['p99']:.2f} ms while it was stopped (n={q['n']}): "
        f"x{pruning['p99_pruning_over_paused']} over stopped, x{pruning['p99_pruning_over_before']} over before "
        f"(target <= x{P99_TARGET})"
    )
    if pruning["rest"]:
        rest = pruning["rest"]
        print(f"then the other {rest['jobs']:,} with no pause and nothing beside: {rest['rows_per_s']:,} rows/s")


if __name__ == "__main__":
    main()
