"""Soak (issue #18, part 5): a mixed load at about twice what the workers can do, for minutes,
reported once a minute.

    python -m bench soak [--minutes 30] [--bulk 200000] [--rate R]

One stack as a user runs it (`mlq api`, one `mlq worker` for three kinds, `mlq reconcile`,
defaults): interactive jobs of three kinds (the tiny text classifier, the tiny GPT-2, MiniLM
embeddings) from four tenants, open loop (`POST /v1/jobs?wait=`, a new request every 1/R s
whether or not the last one answered), a quarter of them with a webhook to a receiver here,
and one bulk run of ``--bulk`` lines of the classifier sent at the start. The load is twice
what the workers can do with the bulk run counted in: ``--rate`` defaults to half the
interactive capacity measured first (16 closed-loop clients for 20 s), and 200,000 lines over
30 minutes are another ~1.4x of it here, so the workers are never idle and the bulk run is
the surplus that priorities hold back (``offered_x_capacity`` in the report). Interactive jobs
alone at 2x capacity would queue without bound whatever mlq did: a p99 under 1 s then needs
refusals, and the tenants' limits (MLQ_JOBS_PER_MINUTE, 429) are far above this load.

Each minute: RSS of every process (API, worker and its pool, reconciler), queue depth (jobs
queued and running), interactive p50 / p99 (submit to result, ``?wait``), 429s, webhooks
received, and PostgreSQL's table and index sizes and dead tuples. After the load stops: how
long until nothing is queued or running, and whether every accepted job finished once.

What must hold: RSS flat after warm-up, interactive p99 under 1 s, queues back to 0, nothing
lost. A benchmark, not a test: its numbers go in bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import subprocess
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import psutil
from sqlalchemy import text

from bench.latency import percentile
from bench.stack import MLQ, Stack, running_stack
from jobs.db import make_engine

RESULTS = Path(__file__).with_name("results")
KINDS = ("text-classification", "text-generation", "embedding")
BODIES = {
    "text-classification": {"input": {"text": "a short post about the match"}},
    "text-generation": {"input": {"prompt": "the team won", "max_new_tokens": 8}},
    "embedding": {"input": {"text": "a sentence to embed for search"}},
}
TENANTS = 4
WAIT_S = 30  # ?wait of each interactive job (under MLQ_MAX_WAIT_S, 60)
CLIENTS, CONNECTIONS_PER_CLIENT = 16, 64  # the open-loop load's HTTP clients


class Hooks(BaseHTTPRequestHandler):
    received: ClassVar[Counter[str]] = Counter()  # deliveries by delivery_id

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        Hooks.received[str(body.get("delivery_id"))] += 1
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


class Minute:
    """What one minute of the load saw."""

    def __init__(self) -> None:
        self.latencies_ms: list[float] = []
        self.statuses: Counter[int] = Counter()
        self.send_lag_ms: list[float] = []  # how late the load sent each request: the generator keeps up
        self.cpu_s = psutil.Process().cpu_times()  # this process's CPU at the minute's start


class Load:
    def __init__(self, stack: Stack, keys: list[str], *, hook_url: str) -> None:
        self.stack, self.keys, self.hook_url = stack, keys, hook_url
        self.minute = Minute()
        self.accepted: set[str] = set()
        self.sent = 0

    async def one(self, http: httpx.AsyncClient, n: int) -> None:
        kind = KINDS[n % len(KINDS)]
        body: dict[str, Any] = {"kind": kind, **BODIES[kind]}
        if n % 4 == 0:
            body["webhook_url"] = self.hook_url
        minute, started = self.minute, time.perf_counter()
        try:
            answer = await http.post(
                "/v1/jobs", params={"wait": WAIT_S}, json=body,
                headers={"Authorization": f"Bearer {self.keys[n % len(self.keys)]}"},
            )  # fmt: skip
        except httpx.HTTPError:
            minute.statuses[0] += 1
            return
        minute.statuses[answer.status_code] += 1
        if answer.status_code == 202:  # answered with the result, or after WAIT_S without it
            self.accepted.add(answer.json()["id"])
            minute.latencies_ms.append((time.perf_counter() - started) * 1000)

    async def run(self, *, rate: float, seconds: float, on_minute: Any) -> None:
        # Many small clients, not one big one: httpcore's pool walks all its connections for
        # every request, and one client of 512 connections kept this process at a full core,
        # which delayed the requests (and their answers) it was meant to time.
        limits = httpx.Limits(max_connections=CONNECTIONS_PER_CLIENT, max_keepalive_connections=CONNECTIONS_PER_CLIENT)
        async with contextlib.AsyncExitStack() as clients:
            https = [
                await clients.enter_async_context(
                    httpx.AsyncClient(base_url=self.stack.url, timeout=WAIT_S + 30, limits=limits)
                )
                for _ in range(CLIENTS)
            ]
            tasks: set[asyncio.Task[None]] = set()
            start = time.monotonic()
            next_minute = start + 60
            while (now := time.monotonic()) < start + seconds:
                if now >= next_minute:
                    done, self.minute = self.minute, Minute()
                    await asyncio.to_thread(on_minute, done)
                    next_minute += 60
                self.minute.send_lag_ms.append((now - (start + self.sent / rate)) * 1000)
                task = asyncio.create_task(self.one(https[self.sent % CLIENTS], self.sent))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                self.sent += 1
                await asyncio.sleep(max(0.0, start + self.sent / rate - time.monotonic()))
            await asyncio.gather(*tasks)
            on_minute(self.minute)


def capacity(stack: Stack, keys: list[str], *, seconds: float = 20, clients: int = 16) -> float:
    """Interactive jobs/s the workers finish with ``clients`` closed-loop ?wait clients (spread
    over the tenants, so no tenant's minute limit caps it)."""
    done = 0

    async def client(http: httpx.AsyncClient, i: int, until: float) -> None:
        nonlocal done
        while time.monotonic() < until:
            kind = KINDS[(done + i) % len(KINDS)]
            answer = await http.post(
                "/v1/jobs", params={"wait": WAIT_S}, json={"kind": kind, **BODIES[kind]},
                headers={"Authorization": f"Bearer {keys[i % len(keys)]}"},
            )  # fmt: skip
            done += answer.status_code == 202 and answer.json().get("status") == "succeeded"

    async def all_clients() -> None:
        async with httpx.AsyncClient(base_url=stack.url, timeout=WAIT_S + 30) as http:
            until = time.monotonic() + seconds
            await asyncio.gather(*(client(http, i, until) for i in range(clients)))

    auth = {"Authorization": f"Bearer {keys[0]}"}
    for kind in KINDS:  # the worker loads each model on its first job
        warm = httpx.post(f"{stack.url}/v1/jobs", json={"kind": kind, **BODIES[kind]}, headers=auth).json()
        deadline = time.monotonic() + 600
        while warm.get("status") != "succeeded" and time.monotonic() < deadline:
            warm = httpx.get(f"{stack.url}/v1/jobs/{warm['id']}", params={"wait": 60}, headers=auth, timeout=90).json()
        if warm.get("status") != "succeeded":
            raise RuntimeError(f"{kind}: the warm-up job did not succeed: {warm}")
    started = time.monotonic()
    asyncio.run(all_clients())
    return done / (time.monotonic() - started)


def cpu_since(then: Any) -> float:
    """Seconds of CPU this process used since ``then`` (a ``cpu_times()``)."""
    now = psutil.Process().cpu_times()
    return (now.user + now.system) - (then.user + then.system)


def latencies(values_ms: list[float]) -> dict[str, float]:
    if not values_ms:
        return {}
    p50, p99 = (round(percentile(values_ms, q), 1) for q in (0.5, 0.99))
    return {"n": len(values_ms), "p50": p50, "p99": p99}


def processes(roots: list[int]) -> dict[str, float]:
    """RSS in MiB of each process of the stack, by role (a pool's children summed apart)."""
    found: dict[str, float] = {}
    for pid in roots:
        try:
            root = psutil.Process(pid)
            role = next((w for w in ("api", "worker", "reconcile") if w in root.cmdline()), str(pid))
            found[role] = round(root.memory_info().rss / 2**20, 1)
            kids = root.children(recursive=True)
            if kids:
                found[f"{role} children"] = round(sum(k.memory_info().rss for k in kids) / 2**20, 1)
        except psutil.Error:
            found[str(pid)] = 0.0
    return found


def database(engine: Any) -> dict[str, Any]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT relname, pg_table_size(relid) AS table_b, pg_indexes_size(relid) AS index_b, n_dead_tup "
                "FROM pg_stat_user_tables WHERE relname IN ('jobs', 'webhook_deliveries', 'batches')"
            )
        ).all()
        depth = dict(
            conn.execute(
                text("SELECT status, count(*) FROM jobs WHERE status IN ('queued', 'running') GROUP BY status")
            ).all()
        )
    tables = {
        r.relname: {"table_mib": round(r.table_b / 2**20, 1), "index_mib": round(r.index_b / 2**20, 1),
                    "dead_tuples": r.n_dead_tup}
        for r in rows
    }  # fmt: skip
    return {"queued": depth.get("queued", 0), "running": depth.get("running", 0), "tables": tables}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench soak")
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--bulk", type=int, default=200_000)
    parser.add_argument("--rate", type=float, default=None, help="interactive jobs/s (default: capacity / 2)")
    args = parser.parse_args(argv)
    hooks = ThreadingHTTPServer(("127.0.0.1", 0), Hooks)
    threading.Thread(target=hooks.serve_forever, daemon=True).start()
    hook_url = f"http://127.0.0.1:{hooks.server_address[1]}/hook"
    env = {"MLQ_ALLOW_HOSTS": '["127.0.0.1"]', "MLQ_LOG_LEVEL": "WARNING"}
    report: dict[str, Any] = {"machine": f"{platform.node()}, {psutil.cpu_count()} cores", "minutes": []}
    with running_stack(
        kinds=",".join(KINDS), data_dir=RESULTS / "data", log_dir=RESULTS / "logs" / "soak", extra_env=env
    ) as stack:
        log = open(RESULTS / "logs" / "soak" / "reconcile.log", "wb")  # noqa: SIM115 - closed below
        reconciler = subprocess.Popen([MLQ, "reconcile"], env=stack.env, stdout=log, stderr=subprocess.STDOUT)
        engine = make_engine(stack.database_url, pool_size=1)
        try:
            keys = [stack.key] + [
                subprocess.run([MLQ, "keys", "create", "--tenant", f"soak-{i}"], env=stack.env,
                               capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
                for i in range(1, TENANTS)
            ]  # fmt: skip
            with engine.connect() as conn:  # dead tuples pile up where autovacuum is off (this VM's CI PostgreSQL)
                report["autovacuum"] = conn.execute(text("SHOW autovacuum")).scalar()
            measured = capacity(stack, keys)  # also loads the three models
            rate = args.rate or measured / 2
            offered = (rate + args.bulk / (args.minutes * 60)) / measured
            report.update(capacity_jobs_per_s=round(measured, 1), rate_jobs_per_s=round(rate, 1),
                          offered_x_capacity=round(offered, 2))  # fmt: skip
            print(f"interactive capacity {measured:.1f} jobs/s; offering {rate:.1f} jobs/s", flush=True)
            lines = "\n".join(
                json.dumps({"custom_id": str(i), "input": {"text": f"post number {i}"}}) for i in range(args.bulk)
            )
            bulk = httpx.post(
                f"{stack.url}/v1/batches", params={"kind": "text-classification"}, content=lines.encode(),
                headers={"Authorization": f"Bearer {keys[1]}", "Content-Type": "application/jsonl"}, timeout=600,
            )  # fmt: skip
            bulk.raise_for_status()
            roots = [p.pid for p in psutil.Process().children() if "mlq" in " ".join(p.cmdline())]
            load = Load(stack, keys, hook_url=hook_url)

            def on_minute(seen: Minute) -> None:
                row = {
                    "minute": len(report["minutes"]) + 1,
                    "rss_mib": processes(roots),
                    **database(engine),
                    "interactive_ms": latencies(seen.latencies_ms),
                    "load_send_lag_ms": latencies(seen.send_lag_ms),
                    "load_cpu_percent": round(100 * cpu_since(seen.cpu_s) / 60, 1),
                    "answers": dict(seen.statuses),
                    "webhooks_received": sum(Hooks.received.values()),
                }  # fmt: skip
                report["minutes"].append(row)
                print(json.dumps(row), flush=True)

            started = time.monotonic()
            asyncio.run(load.run(rate=rate, seconds=args.minutes * 60, on_minute=on_minute))
            stopped = time.monotonic()
            while (now := database(engine))["queued"] + now["running"] > 0 and time.monotonic() - stopped < 1800:
                time.sleep(2)
            report["drained_s_after_load"] = round(time.monotonic() - stopped, 1)
            report["load_s"] = round(stopped - started, 1)
            with engine.connect() as conn:
                final = dict(conn.execute(text("SELECT status, count(*) FROM jobs GROUP BY status")).all())
                unfinished = conn.execute(
                    text("SELECT count(*) FROM jobs WHERE id = ANY(:ids) AND status NOT IN ('succeeded', 'failed')"),
                    {"ids": list(load.accepted)},
                ).scalar_one()
            report.update(
                interactive_accepted=len(load.accepted), interactive_sent=load.sent, jobs_by_status=final,
                accepted_not_finished=unfinished,
                webhooks_received=sum(Hooks.received.values()),
                webhooks_received_twice=sum(1 for n in Hooks.received.values() if n > 1),
            )  # fmt: skip
        finally:
            reconciler.terminate()
            reconciler.wait(timeout=30)
            log.close()
            engine.dispose()
            hooks.shutdown()
    out = RESULTS / "soak.json"
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "minutes"}, indent=2))
    return report
