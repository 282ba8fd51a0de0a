"""`python -m bench [latency|throughput|batch|hostile|pipeline|openai|fairness|retention|soak|plans] [args…]`."""

from __future__ import annotations

import sys

from bench import batch_accept, fairness, hostile, latency, openai_sdk, pipeline, plans, retention, soak, throughput

BENCHMARKS = {
    "latency": latency.main,
    "throughput": throughput.main,
    "batch": batch_accept.main,
    "hostile": hostile.main,
    "pipeline": pipeline.main,
    "openai": openai_sdk.main,
    "fairness": fairness.main,
    "retention": retention.main,
    "soak": soak.main,
    "plans": plans.main,
}

if __name__ == "__main__":
    name = sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("-") else "latency"
    args = sys.argv[2:] if len(sys.argv) > 1 and not sys.argv[1].startswith("-") else sys.argv[1:]
    if name not in BENCHMARKS:
        sys.exit(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
    BENCHMARKS[name](args)
