"""The models file: which model serves each kind, on what device, with what limits.

``MLQ_MODELS`` is a path to a TOML file or the name of a bundled profile
(``demo``, ``production``). Both the API (limits, /v1/models) and the workers
(what to load) read it, so it lives in the contract.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from jobs.kinds import KINDS

PROFILES_DIR = Path(__file__).with_name("profiles")
DEFAULT_PROFILE = "demo"


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str
    model: str = Field(
        description="builtin:<name> (built locally by mlq), package:<module> "
        "(weights shipped in a Python package), a local path, or a hub id"
    )
    revision: str | None = None  # pinned hub revision; required in production
    group: str = "default"  # worker group: `mlq standalone` runs one worker per group
    adapter: str | None = None  # "module:Class" of your own adapter for this kind; default: mlq's registry
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    max_batch_size: int = Field(default=32, ge=1, le=4096)
    # A model call's budget where sizes vary, counted with padding (items x the largest):
    # tokens for the text kinds, pixels for image classification. None: by count only.
    max_batch_tokens: int | None = Field(default=None, ge=1)
    max_batch_pixels: int | None = Field(default=None, ge=1)
    batch_chunk_size: int = Field(default=256, ge=1, le=10_000)  # bulk-run job ids per broker message
    time_limit_s: float = Field(default=120.0, gt=0)  # hard limit: a job running longer is killed with its process
    # soft limit: an interruptible model (generation) stops between steps and the job fails
    # ``timed_out`` while its process goes on; default 80% of time_limit_s
    soft_time_limit_s: float | None = Field(default=None, gt=0)
    max_attempts: int = Field(default=3, ge=1)  # claims before the job is dead-lettered
    limits: dict[str, int] = Field(default_factory=dict)  # checked at submission (422)
    options: dict[str, Any] = Field(default_factory=dict)  # adapter-specific settings
    # what a job's input gets where it leaves a field out, before the kind's own defaults: the
    # demo profile keeps generated images small and few-stepped, so they fit a CPU
    input_defaults: dict[str, Any] = Field(default_factory=dict)
    # the languages the model reads (ISO 639-1); a text mostly in a script none of them is
    # written in gets a warning in its answer (jobs/languages.py). None: not declared
    languages: list[str] | None = None

    def with_defaults(self, data: Any) -> Any:
        """A job's raw input with this deployment's ``input_defaults`` under it."""
        return {**self.input_defaults, **data} if self.input_defaults and isinstance(data, dict) else data

    @model_validator(mode="before")
    @classmethod
    def _no_waiting(cls, data: Any) -> Any:
        if isinstance(data, dict) and "max_wait_ms" in data:
            raise ValueError(
                "max_wait_ms is gone: a worker fills each batch at once with the jobs already queued in "
                "PostgreSQL (those still in flight cannot be claimed yet), so waiting would only add latency; "
                "remove it, and bound a batch with max_batch_size, max_batch_tokens or max_batch_pixels"
            )
        return data

    @model_validator(mode="after")
    def _soft_below_hard(self) -> ModelSpec:
        if self.soft_time_limit_s is not None and self.soft_time_limit_s >= self.time_limit_s:
            raise ValueError(
                f"soft_time_limit_s={self.soft_time_limit_s:g} must be below time_limit_s={self.time_limit_s:g}"
            )
        return self

    @property
    def soft_limit_s(self) -> float:
        return self.soft_time_limit_s if self.soft_time_limit_s is not None else 0.8 * self.time_limit_s


class ModelsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    profile: str
    source: str
    kinds: dict[str, ModelSpec]

    def spec(self, kind: str) -> ModelSpec | None:
        return self.kinds.get(kind)

    def groups(self) -> dict[str, list[str]]:
        """Worker groups and the kinds each serves."""
        groups: dict[str, list[str]] = {}
        for kind, spec in sorted(self.kinds.items()):
            groups.setdefault(spec.group, []).append(kind)
        return groups


class ModelsFileError(ValueError):
    """The models file is missing, not TOML, or names an unknown kind or field."""


def resolve_path(ref: str | Path | None) -> Path:
    if ref is None or str(ref) == "":
        return PROFILES_DIR / f"{DEFAULT_PROFILE}.toml"
    candidate = PROFILES_DIR / f"{ref}.toml"
    if "/" not in str(ref) and candidate.exists():
        return candidate
    return Path(ref)


def load_models_file(ref: str | Path | None = None) -> ModelsConfig:
    path = resolve_path(ref)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelsFileError(
            f"models file {path} does not exist; set MLQ_MODELS to a TOML file or to "
            "one of the bundled profiles: demo, production"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ModelsFileError(f"models file {path} is not valid TOML: {exc}") from None
    return parse_models(raw, source=str(path))


def parse_models(raw: dict[str, Any], *, source: str) -> ModelsConfig:
    defaults = raw.get("defaults", {})
    kinds: dict[str, ModelSpec] = {}
    for kind, entry in (raw.get("kinds") or {}).items():
        if kind not in KINDS:
            raise ModelsFileError(f"{source}: [kinds.{kind}] is not a job kind; known: {', '.join(sorted(KINDS))}")
        merged = {**defaults, **entry, "kind": kind}
        merged["limits"] = {**defaults.get("limits", {}), **entry.get("limits", {})}
        try:
            kinds[kind] = ModelSpec.model_validate(merged)
        except ValidationError as exc:
            raise ModelsFileError(f"{source}: [kinds.{kind}] {exc}") from None
    return ModelsConfig(profile=str(raw.get("profile", "custom")), source=source, kinds=kinds)
