"""Bulk-run speed: accepting a 100,000-line moderation batch (parse, validate, COPY, publish)
and streaming its 100,000 result lines back, with the API's peak memory.

    python -m bench batch [--lines 100000]

No worker runs, so the API has the machine; results are streamed while every item is
still queued (the same rows and the same query as for finished ones).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import httpx
import redis

from bench.stack import running_stack

RESULTS = Path(__file__).with_name("results")
TEXTS = [
    "I will hurt you if you come here again",
    "the team won the championship",
    "今天的天气很好",
    "buy now, limited offer, click this link",
    "我喜欢看电影和玩游戏",
]


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def api_pid(port: int) -> int:
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"api" in cmdline and str(port).encode() in cmdline:
                return int(proc.name)
    raise RuntimeError("API process not found")


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(prog="python -m bench batch")
    parser.add_argument("--lines", type=int, default=100_000)
    args = parser.parse_args(argv)
    RESULTS.mkdir(exist_ok=True)
    body = b"".join(
        json.dumps(
            {"custom_id": f"post-{i}", "input": {"text": f"{TEXTS[i % len(TEXTS)]} #{i}"}}, ensure_ascii=False
        ).encode()
        + b"\n"
        for i in range(args.lines)
    )
    with running_stack(
        kinds=None,
        data_dir=RESULTS / "data",
        log_dir=RESULTS / "logs",
        extra_env={"MLQ_BATCH_MAX_LINES": str(max(200_000, args.lines))},
    ) as stack:
        pid = api_pid(int(stack.url.rsplit(":", 1)[1]))
        rss_before = peak_rss_mib(pid)
        http = httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {stack.key}"}, timeout=300)
        started = time.perf_counter()
        answer = http.post("/v1/batches?kind=moderation", content=body, headers={"Content-Type": "application/jsonl"})
        accept_s = time.perf_counter() - started
        assert answer.status_code == 202, answer.text[:500]
        batch = answer.json()
        rss_accepted = peak_rss_mib(pid)
        messages = sum(
            redis.Redis.from_url(stack.redis_url).llen(k) for k in redis.Redis.from_url(stack.redis_url).keys("mlq.*")
        )
        started = time.perf_counter()
        lines = 0
        with http.stream("GET", f"/v1/batches/{batch['id']}/results") as response:
            for _ in response.iter_lines():
                lines += 1
        results_s = time.perf_counter() - started
        rss_after = peak_rss_mib(pid)
    report = {
        "benchmark": "bulk run: accept a moderation batch, stream its results (no worker running)",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "lines": args.lines,
        "body_mib": round(len(body) / 2**20, 1),
        "accept_s": round(accept_s, 2),
        "accept_items_per_s": round(args.lines / accept_s),
        "broker_messages": messages,
        "results_lines": lines,
        "results_s": round(results_s, 2),
        "results_lines_per_s": round(lines / results_s),
        "api_peak_rss_mib": {
            "before": round(rss_before),
            "after_accept": round(rss_accepted),
            "after_results": round(rss_after),
        },
    }
    (RESULTS / "batch.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
