import pytest
from pydantic import ValidationError

from jobs.kinds import KINDS, get_kind
from jobs.status import TERMINAL, JobStatus


def test_every_kind_has_schemas_and_valid_examples() -> None:
    assert len(KINDS) == 11
    binary = {"speech-recognition", "image-classification"}  # their demo inputs are made by mlq.demo
    for kind in KINDS.values():
        assert kind.examples or kind.name in binary, kind.name
        for example in kind.examples:
            kind.validate_input(example)


def test_unknown_kind_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match=r"known kinds: .*embedding"):
        get_kind("telepathy")


def test_missing_and_mistyped_fields_are_named() -> None:
    kind = get_kind("text-classification")
    with pytest.raises(ValidationError) as missing:
        kind.validate_input({})
    assert missing.value.errors()[0]["loc"] == ("text",)
    with pytest.raises(ValidationError) as typed:
        kind.validate_input({"text": "hi", "top_k": "many"})
    assert typed.value.errors()[0]["loc"] == ("top_k",)


def test_limit_from_models_file_is_enforced_and_named() -> None:
    kind = get_kind("embedding")
    kind.validate_input({"text": "x" * 10}, limits={"max_text_chars": 10})
    with pytest.raises(ValidationError, match="max_text_chars=10"):
        kind.validate_input({"text": "x" * 11}, limits={"max_text_chars": 10})


def test_extra_fields_are_refused() -> None:
    with pytest.raises(ValidationError) as exc:
        get_kind("embedding").validate_input({"text": "a", "txet": "b"})
    assert exc.value.errors()[0]["loc"] == ("txet",)


def test_status_enum_terminal_states() -> None:
    assert {s.value for s in JobStatus} == {"queued", "running", "succeeded", "failed", "cancelled"}
    assert {JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled} == TERMINAL
    assert not JobStatus.running.is_terminal
