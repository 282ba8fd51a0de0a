"""What planning each statement costs (issue #15): a single job's insert (the intake's
statement) and a read of one job by id, on one connection, with PostgreSQL's prepared plans
kept (what the API and workers do) and planned every time (what the reconciler does, and what
every connection did before).

    python -m bench plans [--statements 3000] [--rounds 3]

Rounds alternate the order of the two modes. Each figure is wall time a statement, round
trip included, on an otherwise idle stack (no API, no worker).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import text

from jobs import keys, store
from jobs.db import make_engine, make_sessionmaker, writing
from jobs.migrate import upgrade
from tests.services import fresh_database, start_services


def one_mode(database_url: str, *, plan_each_statement: bool, statements: int) -> dict[str, float]:
    engine = make_engine(database_url, pool_size=1, plan_each_statement=plan_each_statement)
    sessions = make_sessionmaker(engine)
    try:
        with sessions.begin() as session:
            tenant = keys.ensure_tenant(session, name=f"plans-{uuid.uuid4().hex[:8]}")
        ids: list[uuid.UUID] = []
        started = time.perf_counter()
        for _ in range(statements):  # as the API accepts one job: one statement, committed on its own
            job = store.NewJob(
                kind="text-classification",
                model="m",
                profile="demo",
                input={"text": "x"},
                priority=5,
                metadata={},
                max_attempts=3,
            )  # fmt: skip (each has its own id)
            [(row, _)] = store.accept_jobs(sessions, jobs=[(tenant, job)])
            ids.append(row.id)
        inserted = time.perf_counter()
        for job_id in ids:
            with writing(sessions, one_statement=True) as session:  # no BEGIN, no COMMIT
                session.execute(text("SELECT status, output FROM jobs WHERE id = :id"), {"id": job_id}).all()
        read = time.perf_counter()
    finally:
        engine.dispose()
    return {"insert_ms": (inserted - started) / statements * 1000, "read_ms": (read - inserted) / statements * 1000}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench plans")
    parser.add_argument("--statements", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    seen: dict[str, list[dict[str, float]]] = {"prepared plans kept": [], "planned every time": []}
    with (
        tempfile.TemporaryDirectory() as tmp,
        start_services(Path(tmp)) as services,
        fresh_database(services.pg_admin_url) as database_url,
    ):
        upgrade(database_url)
        for round_ in range(args.rounds):
            for every_time in (False, True) if round_ % 2 == 0 else (True, False):
                mode = "planned every time" if every_time else "prepared plans kept"
                got = one_mode(database_url, plan_each_statement=every_time, statements=args.statements)
                seen[mode].append(got)
                print(f"round {round_ + 1} {mode}: insert {got['insert_ms']:.3f} ms, read {got['read_ms']:.3f} ms",
                      flush=True)  # fmt: skip
    report = {mode: {k: round(statistics.median(r[k] for r in rounds), 3) for k in ("insert_ms", "read_ms")}
              for mode, rounds in seen.items()}  # fmt: skip
    for mode, medians in report.items():
        print(f"median, {mode}: insert {medians['insert_ms']} ms, read {medians['read_ms']} ms a statement")
    return report
