"""workers.calls: how a claim's text items are cut into model calls."""

import itertools
import random
import time
from typing import Any

from jobs.kinds import EmbeddingInput
from jobs.modelsfile import load_models_file
from models.base import Adapter, Prediction, StopSignal
from models.tokens import Tokenized
from workers.calls import UNKNOWN_CALL_COST_TOKENS, budgeted, call_cost_tokens, cheapest_calls


def cost(calls: list[list[tuple[int, int]]], call_cost: int) -> int:
    return sum(len(call) * max(size for size, _ in call) + call_cost for call in calls)


def test_short_and_long_texts_run_in_separate_calls_when_that_saves_padding() -> None:
    sized = sorted([(8, i) for i in range(16)] + [(20, 16 + i) for i in range(16)])
    calls = cheapest_calls(sized, budget=0, call_cost=64)
    assert [sorted({size for size, _ in call}) for call in calls] == [[8], [20]]
    assert sorted(i for call in calls for _, i in call) == list(range(32))


def test_a_call_that_costs_more_than_the_padding_it_saves_is_not_made() -> None:
    sized = sorted([(8, i) for i in range(16)] + [(20, 16 + i) for i in range(16)])
    assert len(cheapest_calls(sized, budget=0, call_cost=1_000_000)) == 1


def test_every_call_stays_within_the_budget_and_an_item_over_it_runs_alone() -> None:
    sized = [(10, i) for i in range(10)] + [(300, 10)]
    calls = cheapest_calls(sized, budget=50, call_cost=1_000_000)
    assert all(len(call) == 1 or len(call) * max(s for s, _ in call) <= 50 for call in calls)
    assert [len(call) for call in calls] == [5, 5, 1]


def test_the_cuts_are_the_cheapest_of_all_possible_cuts() -> None:
    rng = random.Random(7)
    for _ in range(200):
        n = rng.randint(1, 8)
        sized = sorted((rng.randint(1, 40), i) for i in range(n))
        budget, call_cost = rng.choice([0, 60, 120]), rng.choice([0, 10, 64, 500])
        most = rng.choice([0, 1, 2, 3, 8])  # items a call may hold (0: any number)
        found = cheapest_calls(sized, budget=budget, call_cost=call_cost, most=most)
        best = None
        for mask in itertools.product([False, True], repeat=n - 1):  # a cut after item k or not
            calls, start = [], 0
            for k, cut in enumerate(mask, start=1):
                if cut:
                    calls.append(sized[start:k])
                    start = k
            calls.append(sized[start:])
            within = all(len(c) == 1 or not budget or len(c) * max(s for s, _ in c) <= budget for c in calls)
            if within and all(not most or len(c) <= most for c in calls):
                best = min(best if best is not None else cost(calls, call_cost), cost(calls, call_cost))
        assert [item for call in found for item in call] == sized
        assert cost(found, call_cost) == best, (sized, budget, call_cost, most, found)
        assert all(not most or len(call) <= most for call in found)


class Timed(Adapter[Any, Any]):
    """A text model whose call takes 10 ms plus 0.2 ms per padded token (a word is a token,
    plus two special ones): a call costs as much as 50 tokens."""

    kind = "embedding"
    budget_unit = "tokens"
    fixed_s, per_token_s = 0.010, 0.0002

    def load_weights(self, device: str) -> None:
        pass

    def prepare(self, item: Any) -> Tokenized:
        return Tokenized(item, list(range(len(item.text.split()) + 2)))

    def size(self, prepared: Tokenized) -> int:
        return len(prepared.ids)

    def predict(self, batch: list[Any], *, stop: StopSignal | None = None) -> list[Prediction]:
        time.sleep(self.fixed_s + self.per_token_s * len(batch) * max(self.size(p) for p in batch))
        return []


def test_a_worker_measures_what_a_call_costs_in_tokens() -> None:
    adapter = Timed(load_models_file("demo").kinds["embedding"])
    adapter.load("cpu")
    assert 25 <= call_cost_tokens(adapter) <= 100  # 50; a busy machine only adds time, the fastest try counts


def test_kinds_that_do_not_count_tokens_are_not_measured_and_keep_one_call() -> None:
    class Images(Timed):
        budget_unit = "pixels"

    adapter = Images(load_models_file("demo").kinds["embedding"])
    assert call_cost_tokens(adapter) == UNKNOWN_CALL_COST_TOKENS
    ready = [(i, adapter.prepare(EmbeddingInput(text="word " * i))) for i in range(5, 0, -1)]
    assert budgeted(adapter, ready) == [ready]  # no pixel budget: one call, in order
    adapter.spec = adapter.spec.model_copy(update={"max_batch_size": 2})
    assert budgeted(adapter, ready) == [ready[:2], ready[2:4], ready[4:]]  # calls of max_batch_size at most
