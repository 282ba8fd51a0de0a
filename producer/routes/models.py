"""/v1/models: which model serves each kind here, its limits and schemas."""

from __future__ import annotations

from fastapi import APIRouter

from jobs.kinds import KINDS
from producer.deps import ReaderDep, StateDep
from producer.errors import responses
from producer.schemas import ModelView

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", response_model=list[ModelView], responses=responses())
def list_models(state: StateDep, _: ReaderDep) -> list[ModelView]:
    return [
        ModelView(
            kind=kind,
            model=spec.model,
            revision=spec.revision,
            profile=state.models.profile,
            description=KINDS[kind].description,
            limits=spec.limits,
            max_batch_size=spec.max_batch_size,
            input_schema=KINDS[kind].input_model.model_json_schema(),
            output_schema=KINDS[kind].output_model.model_json_schema(),
        )
        for kind, spec in sorted(state.models.kinds.items())
    ]
