"""jobs.pgvalues.output_json: what a worker hands PostgreSQL for a result."""

import json
import math

from jobs.kinds import EmbeddingOutput, TextGenerationOutput
from jobs.pgvalues import output_json


def test_a_schema_encodes_to_the_same_json_as_its_dump() -> None:
    embedding = EmbeddingOutput(embedding=[0.1, -2.5e-08, 1 / 3], dimensions=3)
    generated = TextGenerationOutput(text="naïve 生成", finish_reason="stop", prompt_tokens=1, completion_tokens=2)
    for output in (embedding, generated):
        assert json.loads(output_json(output)) == json.loads(output_json(output.model_dump(mode="json")))
        assert json.loads(output_json(output)) == output.model_dump(mode="json")


def test_nul_characters_are_dropped_from_schemas_and_dicts() -> None:
    generated = TextGenerationOutput(text="a\x00b", finish_reason="stop", prompt_tokens=1, completion_tokens=2)
    assert json.loads(output_json(generated))["text"] == "ab"
    assert json.loads(output_json({"k\x00": ["x\x00y"]})) == {"k": ["xy"]}


def test_values_postgresql_refuses_stay_visible_instead_of_becoming_null() -> None:
    """A NaN is written as NaN (not null, pydantic's default) and a lone surrogate escaped:
    PostgreSQL refuses both, and the job fails with result_not_storable saying so."""
    encoded = output_json(EmbeddingOutput(embedding=[math.nan, math.inf], dimensions=2, tokens=3))
    assert "NaN" in encoded and "Infinity" in encoded and "null" not in encoded
    surrogate = TextGenerationOutput(text="a\ud800b", finish_reason="stop", prompt_tokens=1, completion_tokens=2)
    assert "\\ud800" in output_json(surrogate)
