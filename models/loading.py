"""Where weights come from and how they load: safetensors only, no remote code.

A model reference in the models file is one of:

- ``builtin:<name>``: a tiny model mlq builds locally (``models.tiny``), for the demo;
- ``package:<module>``: weights shipped inside an installed Python package;
- a local directory;
- a hub id (with ``revision`` pinned), fetched ahead of time by ``mlq models fetch``.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

from jobs.errors import ModelNotConfigured
from jobs.modelsfile import ModelSpec


def resolve_source(spec: ModelSpec, *, data_dir: Path) -> str:
    """A local path (or hub id) that ``from_pretrained`` can load."""
    ref = spec.model
    if ref.startswith("builtin:"):
        from models.tiny import ensure_built

        return str(ensure_built(ref.removeprefix("builtin:"), data_dir=data_dir))
    if ref.startswith("package:"):
        return str(package_model_dir(ref.removeprefix("package:")))
    return ref


def package_model_dir(module: str) -> Path:
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        raise ModelNotConfigured(f"package {module!r} is not installed; pip install it or change the models file")
    root = Path(next(iter(found.submodule_search_locations)))
    for candidate in (root / "model", root):
        if (candidate / "config.json").exists():
            return candidate
    raise ModelNotConfigured(f"package {module!r} has no model folder with a config.json under {root}")


COMMIT = re.compile(r"[0-9a-f]{40}")


def pretrained_kwargs(spec: ModelSpec, source: str, *, allow_unpinned: bool = False) -> dict[str, Any]:
    """Arguments every ``from_pretrained`` call of mlq passes: the safe ones. A hub model
    loads only at a pinned commit, so every host runs the same weights (a branch such as
    "main" moves), unless ``allow_unpinned`` (the worker passes MLQ_ALLOW_UNPINNED_MODELS,
    or true when the stack is standalone)."""
    kwargs: dict[str, Any] = {"use_safetensors": True, "trust_remote_code": False}
    if Path(source).is_dir():
        kwargs["local_files_only"] = True
        return kwargs
    if not COMMIT.fullmatch(spec.revision or "") and not allow_unpinned:
        raise ModelNotConfigured(
            f"{spec.kind}: {source}@{spec.revision or 'main'} is not pinned to a commit; run "
            "`mlq models fetch --pin LOCKFILE` and deploy with MLQ_MODELS=LOCKFILE "
            "(or set MLQ_ALLOW_UNPINNED_MODELS=true to load a moving revision)"
        )
    if spec.revision:
        kwargs["revision"] = spec.revision
    return kwargs


def pick_device(policy: str) -> str:
    """``auto`` means the (first visible) GPU when there is one, else the CPU."""
    import torch

    if policy == "cpu":
        return "cpu"
    if policy == "cuda" and not torch.cuda.is_available():
        raise ModelNotConfigured("the models file asks for device='cuda' but no GPU is visible")
    return "cuda" if torch.cuda.is_available() else "cpu"


def torch_dtype(policy: str, device: str) -> Any:
    """``auto``: half precision on a GPU that supports it, float32 on the CPU."""
    import torch

    if policy == "auto":
        if device == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return getattr(torch, policy)
