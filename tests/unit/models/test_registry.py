"""Every kind of the demo profile has an adapter the registry can create and load."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.kinds import KINDS
from jobs.modelsfile import load_models_file
from models.base import Adapter
from models.registry import ADAPTERS, adapter_class, create_adapter


def test_every_kind_has_an_adapter() -> None:
    assert set(ADAPTERS) == set(KINDS)
    for kind in KINDS:
        cls = adapter_class(kind)
        assert issubclass(cls, Adapter) and cls.kind == kind


@pytest.mark.parametrize("kind", sorted(load_models_file("demo").kinds))
def test_demo_model_of_each_kind_is_created_and_loaded_through_the_registry(kind: str, data_dir: Path) -> None:
    adapter = create_adapter(load_models_file("demo").kinds[kind], data_dir=data_dir)
    adapter.load("cpu")
    assert adapter.kind == kind and Path(adapter.source).is_dir()


def test_unknown_kind_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="adapters exist for"):
        adapter_class("telepathy")
