"""Fair share with real workers (issue #20): a tenant's small bulk run, sent while another
tenant's big run of the same kind is under way, does not wait for the big one to finish."""

from __future__ import annotations

import time
import uuid

import httpx

from tests.conftest import Api, create_key

BIG, SMALL = 4000, 100


def lines(n: int, prefix: str) -> bytes:
    return b"".join(f'{{"custom_id": "{prefix}-{i}", "input": {{"text": "post {i}"}}}}\n'.encode() for i in range(n))


def succeeded(stack: Api, key: str, batch_id: str) -> int:
    with stack.client(key) as http:
        counts: dict[str, int] = http.get(f"/v1/batches/{batch_id}").json()["counts"]
    return counts["succeeded"]


def test_a_small_run_beside_a_big_one_of_another_tenant_takes_its_share_not_the_rest(stack: Api) -> None:
    big_key = create_key(stack.settings, f"fair-big-{uuid.uuid4().hex[:6]}")
    small_key = create_key(stack.settings, f"fair-small-{uuid.uuid4().hex[:6]}")
    jsonl = {"Content-Type": "application/jsonl"}
    with stack.client(big_key) as http:
        big = http.post("/v1/batches?kind=moderation", content=lines(BIG, "big"), headers=jsonl).json()["id"]
    deadline = time.monotonic() + 180
    while succeeded(stack, big_key, big) < 200 and time.monotonic() < deadline:  # under way
        time.sleep(0.1)
    with stack.client(small_key) as http:
        small = http.post("/v1/batches?kind=moderation", content=lines(SMALL, "small"), headers=jsonl).json()["id"]
    big_at_start = succeeded(stack, big_key, big)
    while succeeded(stack, small_key, small) < SMALL and time.monotonic() < deadline:
        time.sleep(0.05)
    big_meanwhile = succeeded(stack, big_key, big) - big_at_start
    with stack.client(big_key) as http:
        running = http.get(f"/v1/batches/{big}").json()
    metrics = httpx.get(f"{stack.url}/metrics", timeout=30).text
    assert succeeded(stack, small_key, small) == SMALL
    # first come, first served, the small run waited for the big one's ~3,800 queued lines;
    # with equal shares it waits for about as many of them as it has (claims of 256 lines)
    assert big_meanwhile <= 1000, f"the big run did {big_meanwhile} lines while the small one ran"
    assert succeeded(stack, big_key, big) < BIG, "the big run must still be going: else nothing was shared"
    # where the big run stands: its rate of the last minute, and when it will be done at that rate
    assert running["done_last_minute"] > 0 and running["eta_s"] is not None and running["eta_s"] > 0
    shares = [
        line for line in metrics.splitlines() if line.startswith("mlq_tenant_share{") and 'kind="moderation"' in line
    ]
    assert any("fair-small-" in line for line in shares) and any("fair-big-" in line for line in shares), shares
    assert any(x.startswith("mlq_tenant_jobs{") and "fair-big-" in x for x in metrics.splitlines())
