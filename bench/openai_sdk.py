"""The OpenAI-compatible door's own cost: embeddings through the official ``openai`` SDK beside
mlq's native ``POST /v1/jobs?wait``, and accepting a 100,000-line Batch API file beside the
same texts as a native JSONL bulk run.

    python -m bench openai [--texts 1000] [--clients 16] [--lines 100000] [--rounds 2]

The real all-MiniLM-L6-v2 on short texts (8-19 words), one worker with the defaults, the
default INFO log level. Both clients send one text per request from ``--clients`` threads;
the SDK also sends lists of 32 (its usual use). The SDK and httpx cost CPU in this process
that the API and the model do not get; the native side uses httpx too, so both pay it.
Rounds alternate, so drift on a shared machine hits both. One setting differs from the
defaults: ``MLQ_JOBS_PER_MINUTE=0`` (default 6,000 a tenant), which the bench's own traffic
would pass in its first minute.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai

from bench.stack import running_stack

RESULTS = Path(__file__).with_name("results")
WORDS = "the film was long but the music and the actors made every minute of it worth seeing again".split()  # noqa: SIM905


def short_texts(n: int) -> list[str]:
    """Texts of 8 to 19 words, each different."""
    return [f"{' '.join(WORDS[: 8 + i % 12])} #{i}" for i in range(n)]


def timed(fn: Any, items: list[Any], clients: int) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(fn, items))
    return time.perf_counter() - started


def sdk_rate(client: openai.OpenAI, texts: list[str], clients: int, per_call: int) -> float:
    calls = [texts[i : i + per_call] for i in range(0, len(texts), per_call)]

    def embed(chunk: list[str]) -> None:
        answer = client.embeddings.create(model="embedding", input=chunk if per_call > 1 else chunk[0])
        assert len(answer.data) == len(chunk)

    return len(texts) / timed(embed, calls, clients)


def native_rate(http: httpx.Client, texts: list[str], clients: int) -> float:
    def embed(text: str) -> None:
        answer = http.post("/v1/jobs?wait=60", json={"kind": "embedding", "input": {"text": text}})
        assert answer.json()["status"] == "succeeded", answer.text[:300]

    return len(texts) / timed(embed, texts, clients)


def batch_file(lines: int) -> tuple[bytes, bytes]:
    """The same texts as a Batch API file and as a native JSONL bulk run."""
    texts = short_texts(lines)
    openai_lines = b"".join(
        json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/embeddings",
                    "body": {"model": "embedding", "input": t}}).encode() + b"\n"
        for i, t in enumerate(texts)
    )  # fmt: skip
    native = b"".join(
        json.dumps({"custom_id": f"r{i}", "input": {"text": t}}).encode() + b"\n" for i, t in enumerate(texts)
    )
    return openai_lines, native


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench openai")
    parser.add_argument("--texts", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    texts = short_texts(args.texts)
    rates: dict[str, list[float]] = {"native ?wait, 1 text/request": [], "SDK, 1 text/call": [],
                                     "SDK, 32 texts/call": []}  # fmt: skip
    env = {"MLQ_LOG_LEVEL": "INFO", "MLQ_JOBS_PER_MINUTE": "0", "MLQ_BATCH_MAX_LINES": str(max(200_000, args.lines))}
    with running_stack(kinds="embedding", data_dir=RESULTS / "data", log_dir=RESULTS / "logs", extra_env=env) as stack:
        http = httpx.Client(
            base_url=stack.url,
            headers={"Authorization": f"Bearer {stack.key}"},
            timeout=300,
            limits=httpx.Limits(max_connections=args.clients),
        )
        client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=stack.key, max_retries=0, timeout=300)
        client.embeddings.create(model="embedding", input="warm up: the worker loads its model")
        for _ in range(args.rounds):
            rates["native ?wait, 1 text/request"].append(native_rate(http, texts, args.clients))
            rates["SDK, 1 text/call"].append(sdk_rate(client, texts, args.clients, 1))
            rates["SDK, 32 texts/call"].append(sdk_rate(client, texts, args.clients, 32))
        openai_lines, native_lines = batch_file(args.lines)
        started = time.perf_counter()
        native = http.post("/v1/batches?kind=embedding", content=native_lines,
                           headers={"Content-Type": "application/jsonl"})  # fmt: skip
        native_s = time.perf_counter() - started
        assert native.status_code == 202, native.text[:300]
        http.post(f"/v1/batches/{native.json()['id']}/cancel")  # the worker is left to the next run
        started = time.perf_counter()
        uploaded = client.files.create(file=("requests.jsonl", openai_lines), purpose="batch")
        upload_s = time.perf_counter() - started
        batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h")
        create_s = time.perf_counter() - started - upload_s
        assert batch.request_counts is not None and batch.request_counts.total == args.lines
        client.batches.cancel(batch.id)
    base = max(rates["native ?wait, 1 text/request"])
    print(f"embeddings, {args.texts} short texts, {args.clients} clients, best of {args.rounds} alternating rounds:")
    for name, values in rates.items():
        print(f"  {name:32} {max(values):8.1f} items/s  ({max(values) / base:.2f}x native)  all: "
              + ", ".join(f"{v:.1f}" for v in values))  # fmt: skip
    total_s = upload_s + create_s
    print(f"{args.lines:,}-line Batch API file ({len(openai_lines) / 1e6:.1f} MB): upload {upload_s:.2f} s, "
          f"create {create_s:.2f} s, total {total_s:.2f} s = {args.lines / total_s:,.0f} lines/s")  # fmt: skip
    print(f"same texts as a native JSONL bulk run ({len(native_lines) / 1e6:.1f} MB): {native_s:.2f} s "
          f"= {args.lines / native_s:,.0f} lines/s (Batch API: {total_s / native_s:.2f}x the time)")  # fmt: skip
