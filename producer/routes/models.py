"""/v1/models: which model serves each kind here, its limits and schemas, in the list OpenAI's
SDK reads (``{"object": "list", "data": [...]}``). A model's id is its kind; the served
model's name is an alias (the first kind it serves, by name, when it serves several)."""

from __future__ import annotations

import time

from fastapi import APIRouter, HTTPException, status

from jobs.kinds import KINDS
from jobs.modelsfile import ModelsConfig
from producer.deps import ReaderDep, StateDep
from producer.errors import responses
from producer.openai_schemas import ModelEntry, ModelList

router = APIRouter(prefix="/v1/models", tags=["models"])

LOADED_AT = int(time.time())  # when this API process read its models file


def entries(models: ModelsConfig) -> list[ModelEntry]:
    return [
        ModelEntry(
            id=kind,
            created=LOADED_AT,
            kind=kind,
            model=spec.model,
            revision=spec.revision,
            profile=models.profile,
            description=KINDS[kind].description,
            limits=spec.limits,
            max_batch_size=spec.max_batch_size,
            input_schema=KINDS[kind].input_model.model_json_schema(),
            output_schema=KINDS[kind].output_model.model_json_schema(),
        )
        for kind, spec in sorted(models.kinds.items())
    ]


def kind_named(models: ModelsConfig, name: str) -> str | None:
    """The kind a model id names: a kind served here, or the name of a served model."""
    if name in models.kinds:
        return name
    return next((kind for kind, spec in sorted(models.kinds.items()) if spec.model == name), None)


@router.get("", response_model=ModelList, responses=responses())
def list_models(state: StateDep, _: ReaderDep) -> ModelList:
    return ModelList(data=entries(state.models))


@router.get("/{model_id:path}", response_model=ModelEntry, responses=responses(404))
def get_model(model_id: str, state: StateDep, _: ReaderDep) -> ModelEntry:
    kind = kind_named(state.models, model_id)
    if kind is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no model {model_id!r} here; GET /v1/models lists them")
    return next(entry for entry in entries(state.models) if entry.kind == kind)
