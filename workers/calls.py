"""How a claim's prepared items become model calls.

Text models pad every item of a call to its longest, so a claim's texts are ordered by
length and cut where a shorter call saves more padding than one more call costs. What a
call costs, in padded tokens, depends on the model and the device: for all-MiniLM-L6-v2 on
one CPU thread padding is dear and a call cheap; for a tiny model or a GPU it is the other
way round. So each worker measures it when it loads the model (``call_cost_tokens``).
"""

from __future__ import annotations

import time
from typing import Any, TypeVar

from jobs.kinds import get_kind
from models.base import Adapter

J = TypeVar("J")  # what travels with each item: the runner's claimed job, the benchmark's index
T = TypeVar("T")

UNKNOWN_CALL_COST_TOKENS = 1_000_000.0  # not measured: the fewest calls the budget allows
CALIBRATION_TRIES = 3  # the fastest of these counts: a shared machine only ever adds time
CALIBRATION_ITEMS = 8  # the larger call: this many items of CALIBRATION_WORDS words
CALIBRATION_WORDS = 32


def call_cost_tokens(adapter: Adapter[Any, Any]) -> float:
    """What one more model call costs, in padded tokens, for a loaded text adapter: one
    lone short text and a call of 8 texts of about 32 tokens, timed (fastest of three);
    the fixed part of a call over the cost of a token. UNKNOWN_CALL_COST_TOKENS for
    adapters that do not count tokens or whose kind has no ``text`` input.

    Measured on the 2-core VM: all-MiniLM-L6-v2 about 25 tokens on one torch thread and 55
    on two (a token is dear), the tiny test classifier about 350 (a call is dear: cutting
    its claims at a fixed cost of 64 tokens made it 1.6x slower)."""
    if adapter.budget_unit != "tokens":
        return UNKNOWN_CALL_COST_TOKENS
    kind = get_kind(adapter.kind)
    try:
        short = adapter.prepare(kind.validate_input({"text": "a"}))
        long = adapter.prepare(kind.validate_input({"text": " ".join(["word"] * CALIBRATION_WORDS)}))
    except ValueError:  # pydantic's ValidationError: this kind's input is not a text
        return UNKNOWN_CALL_COST_TOKENS
    small_tokens, large_tokens = adapter.size(short), CALIBRATION_ITEMS * adapter.size(long)
    adapter.predict([short, long])  # warm-up: the first call pays for lazy initialisation
    small_s = _fastest(adapter, [short])
    large_s = _fastest(adapter, [long] * CALIBRATION_ITEMS)
    per_token_s = (large_s - small_s) / max(1, large_tokens - small_tokens)
    if per_token_s <= 0:  # the larger call was not slower: a call's cost is all fixed
        return UNKNOWN_CALL_COST_TOKENS
    fixed_s = max(0.0, small_s - per_token_s * small_tokens)
    return min(UNKNOWN_CALL_COST_TOKENS, fixed_s / per_token_s)


def _fastest(adapter: Adapter[Any, Any], items: list[Any]) -> float:
    times = []
    for _ in range(CALIBRATION_TRIES):
        started = time.perf_counter()
        adapter.predict(items)
        times.append(time.perf_counter() - started)
    return min(times)


def budgeted(
    adapter: Adapter[Any, Any], ready: list[tuple[J, Any]], *, call_cost_tokens: float = UNKNOWN_CALL_COST_TOKENS
) -> list[list[tuple[J, Any]]]:
    """A claim's prepared items, ``(job, item)`` pairs, as model calls.

    Texts are ordered by length and cut into the calls that cost least: padded tokens
    (items x the longest) plus ``call_cost_tokens`` per call. On mixed English and
    Chinese sentences, all-MiniLM-L6-v2 on one CPU thread ran 1.23-1.29x faster (209 -> 270
    items/s with the measured call cost) than in calls of 32 in arrival order. Every call stays within the kind's
    ``max_batch_tokens`` or ``max_batch_pixels``, padding counted; an item over it runs
    alone. Images keep their order (the processor resizes them: no padding to save).
    No unit: calls in order. A call holds the kind's ``max_batch_size`` items at most (a
    claim of a bulk run's message holds more)."""
    unit = adapter.budget_unit
    budget = {"tokens": adapter.spec.max_batch_tokens, "pixels": adapter.spec.max_batch_pixels}.get(unit or "") or 0
    most = adapter.spec.max_batch_size
    if len(ready) < 2 or unit is None or (unit == "pixels" and not budget):
        return [ready[i : i + most] for i in range(0, len(ready), most)]
    sized = [(adapter.size(item), (job, item)) for job, item in ready]
    if unit == "tokens":
        sized.sort(key=lambda s: s[0])
        calls_by_cost = cheapest_calls(sized, budget=budget, call_cost=call_cost_tokens, most=most)
        return [[pair for _, pair in call] for call in calls_by_cost]
    calls: list[list[tuple[J, Any]]] = [[]]
    largest = 0
    for size, pair in sized:
        if calls[-1] and (len(calls[-1]) >= most or (len(calls[-1]) + 1) * max(largest, size) > budget):
            calls.append([])
            largest = 0
        calls[-1].append(pair)
        largest = max(largest, size)
    return calls


def cheapest_calls(
    sized: list[tuple[int, T]], *, budget: int, call_cost: float, most: int = 0
) -> list[list[tuple[int, T]]]:
    """Cut items sorted by size into consecutive calls minimising padded size (count x the
    largest) plus ``call_cost`` per call, each within ``budget`` (0: none) unless alone and
    of ``most`` items at most (0: any number). Dynamic programming over the cut points:
    O(n x most); 0.05 ms for 32 items."""
    n = len(sized)
    best = [0.0] + [-1.0] * n  # best[j]: the cheapest cost of the first j items
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        largest = sized[j - 1][0]
        for i in range(j - 1, -1, -1):  # the last call holds items i..j-1
            if j - i > 1 and ((budget and (j - i) * largest > budget) or (most and j - i > most)):
                break  # longer calls only grow
            cost = best[i] + (j - i) * largest + call_cost
            if best[j] < 0 or cost < best[j]:
                best[j], cut[j] = cost, i
    calls, j = [], n
    while j:
        calls.append(sized[cut[j] : j])
        j = cut[j]
    return calls[::-1]
