"""What a hostile caller costs everyone else (issue #14), against a real `mlq api`:

1. the API's RSS before and after a chunked body of ``--body-mb`` MB sent without a key, and
   with a key (the body limit counted as it is read), with the time to the answer;
2. another tenant's submit and ``/healthz`` latency (p50, p99) at idle, then while one tenant
   has ``--fetches`` jobs in flight whose URL inputs trickle one byte every 2 s.

    python -m bench hostile [--fetches 64] [--requests 300] [--body-mb 150]

No worker runs: what is measured is the API alone. Defaults as a user gets them
(``input_fetches_per_tenant=8``, ``input_fetch_timeout_s=10``), log level WARNING.
"""

from __future__ import annotations

import argparse
import http.server
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.stack import MLQ, Stack, running_stack

ROOT = Path(__file__).resolve().parent


class Trickle(http.server.BaseHTTPRequestHandler):
    stop = threading.Event()

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", "1000000")
        self.end_headers()
        while not self.stop.wait(2.0):
            try:
                self.wfile.write(b"x")
                self.wfile.flush()
            except OSError:
                return

    def log_message(self, *args: object) -> None:
        pass


def api_process() -> psutil.Process:
    for child in psutil.Process().children(recursive=True):
        if "api" in child.cmdline()[1:3]:
            return child
    raise RuntimeError("no mlq api process among this benchmark's children")


def chunked(stack: Stack, *, key: str | None, total_mb: int) -> dict[str, Any]:
    """Send a chunked JSON body of ``total_mb`` MB (or until the API answers and closes)."""
    host, port = stack.url.removeprefix("http://").split(":")
    head = "POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
    head += f"Authorization: Bearer {key}\r\n\r\n" if key else "\r\n"
    piece = b"x" * (1 << 20)
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    start = b'{"kind":"embedding","input":{"text":"'
    started, sent = time.perf_counter(), 0
    with socket.create_connection((host, int(port)), timeout=300) as sock:
        sock.sendall(head.encode() + f"{len(start):x}\r\n".encode() + start + b"\r\n")
        try:
            while sent < total_mb << 20:
                sock.sendall(chunk)
                sent += len(piece)
            sock.sendall(b'"}}\r\n0\r\n\r\n')
        except OSError:
            pass
        answer = b""
        while b"\r\n" not in answer:
            data = sock.recv(4096)
            if not data:
                break
            answer += data
    return {"status": answer.split(b"\r\n")[0].decode(), "sent_mb": sent / 2**20, "s": time.perf_counter() - started}


def latencies(stack: Stack, key: str, *, requests: int) -> dict[str, list[float]]:
    found: dict[str, list[float]] = {"submit": [], "healthz": []}
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as http:
        for i in range(requests):
            started = time.perf_counter()
            assert http.post("/v1/jobs", json={"kind": "embedding", "input": {"text": f"n{i}"}}).status_code == 202
            found["submit"].append(time.perf_counter() - started)
            started = time.perf_counter()
            assert http.get("/healthz").status_code == 200
            found["healthz"].append(time.perf_counter() - started)
    return found


def percentiles(values: list[float]) -> str:
    cuts = statistics.quantiles(values, n=100)
    return f"p50 {cuts[49] * 1000:.1f} ms, p99 {cuts[98] * 1000:.1f} ms, max {max(values) * 1000:.1f} ms"


def flood(stack: Stack, key: str, url: str, *, fetches: int) -> tuple[ThreadPoolExecutor, list[Any]]:
    pool = ThreadPoolExecutor(fetches)

    def one(_: int) -> int:
        with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as http:
            job = {"kind": "image-classification", "input": {"image": {"url": url}}}
            return http.post("/v1/jobs", json=job).status_code

    return pool, [pool.submit(one, i) for i in range(fetches)]


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench hostile")
    parser.add_argument("--fetches", type=int, default=64)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--body-mb", type=int, default=150)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        env = {"MLQ_ALLOW_HOSTS": '["127.0.0.1"]'}  # the trickling server listens there
        with running_stack(
            kinds=None, data_dir=Path(tmp), log_dir=ROOT / "results" / "hostile", extra_env=env
        ) as stack:
            api = api_process()
            flooder = subprocess.run(
                [MLQ, "keys", "create", "--tenant", "flooder"],
                env=stack.env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()[-1]
            print(f"API RSS at start: {api.memory_info().rss / 2**20:.0f} MB")
            for who, key in (("without a key", None), ("with a key", stack.key)):
                before = api.memory_info().rss
                result = chunked(stack, key=key, total_mb=args.body_mb)
                after = api.memory_info().rss
                print(
                    f"{args.body_mb} MB chunked {who}: {result['status']} after {result['s']:.2f} s, "
                    f"{result['sent_mb']:.0f} MB sent; API RSS {before / 2**20:.0f} -> {after / 2**20:.0f} MB"
                )
            idle = latencies(stack, stack.key, requests=args.requests)
            server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, daemon=True).start()
            pool, flooded = flood(stack, flooder, f"http://127.0.0.1:{server.server_address[1]}/slow.png",
                                  fetches=args.fetches)  # fmt: skip
            time.sleep(1.0)
            loaded = latencies(stack, stack.key, requests=args.requests)
            in_flight = sum(not f.done() for f in flooded)
            Trickle.stop.set()
            statuses = [f.result() for f in flooded]
            pool.shutdown()
            server.shutdown()
            print(f"another tenant at idle:      submit {percentiles(idle['submit'])}")
            print(f"                             /healthz {percentiles(idle['healthz'])}")
            print(f"with {args.fetches} slow URL jobs sent ({in_flight} unanswered at the end of the window):")
            print(f"                             submit {percentiles(loaded['submit'])}")
            print(f"                             /healthz {percentiles(loaded['healthz'])}")
            print(f"the flooding tenant got: { {s: statuses.count(s) for s in sorted(set(statuses))} }")
