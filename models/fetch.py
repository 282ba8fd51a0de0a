"""``mlq models fetch``: put every model of a models file on local disk ahead of time,
so GPU hosts can run offline (``HF_HUB_OFFLINE=1``). Safetensors weights only."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from jobs.errors import ModelNotConfigured
from jobs.modelsfile import ModelsConfig, ModelSpec
from models.loading import resolve_source

ALLOW_PATTERNS = [  # configs, tokenizers and safetensors; never pickled weights (*.bin, *.pt, *.ckpt)
    "*.json",
    "*.safetensors",
    "*.txt",
    "*.model",
    "*.tiktoken",
    "*.jinja",
    "*/*.json",
    "*/*.safetensors",
    "*/*.txt",
    "*/*.model",
]


@dataclass(frozen=True)
class Fetched:
    kind: str
    ref: str
    revision: str | None
    path: str


def refs(spec: ModelSpec) -> list[tuple[str, str | None]]:
    """The models a kind needs, with their revisions: its own and any its options name
    (moderation's ``image_model``, pinned by ``image_model_revision``)."""
    extra = spec.options.get("image_model")
    own = [(spec.model, spec.revision)]
    return own + ([(extra, spec.options.get("image_model_revision"))] if isinstance(extra, str) else [])


def fetch_models(config: ModelsConfig, *, data_dir: Path, cache_dir: Path | None = None) -> list[Fetched]:
    fetched = []
    for kind, spec in sorted(config.kinds.items()):
        for ref, revision in refs(spec):
            one = spec.model_copy(update={"model": ref, "revision": revision})
            if ref.startswith(("builtin:", "package:")) or Path(ref).is_dir():
                path = resolve_source(one, data_dir=data_dir)
            else:
                path = download(ref, revision=revision, cache_dir=cache_dir)
            fetched.append(Fetched(kind=kind, ref=ref, revision=revision, path=path))
    return fetched


def pinned_revision(path: str) -> str | None:
    """The commit a hub snapshot folder holds (``…/snapshots/<40-hex sha>``), else None."""
    name = Path(path).name
    return name if len(name) == 40 and all(c in "0123456789abcdef" for c in name) else None


def pin(models_toml: str, fetched: list[Fetched]) -> str:
    """The models file with each hub model's ``revision`` set to the commit just fetched."""
    import tomllib

    raw = tomllib.loads(models_toml)
    for item in fetched:
        sha = pinned_revision(item.path)
        entry = raw.get("kinds", {}).get(item.kind, {})
        if sha and entry.get("model") == item.ref:
            entry["revision"] = sha
        elif sha and entry.get("options", {}).get("image_model") == item.ref:
            entry["options"]["image_model_revision"] = sha
    return dumps_toml(raw)


def dumps_toml(value: dict[str, object], prefix: str = "") -> str:
    """A small TOML writer for models files (tables, strings, numbers, booleans, flat lists)."""
    import json

    scalars, tables = [], []
    for key, item in value.items():
        if isinstance(item, dict):
            tables.append((key, item))
        else:
            scalars.append(
                f"{json.dumps(key) if not key.replace('-', '').replace('_', '').isalnum() else key} = "
                f"{json.dumps(item, ensure_ascii=False)}"
            )
    out = "\n".join(scalars) + ("\n" if scalars else "")
    for key, table in tables:
        name = f"{prefix}.{key}" if prefix else key
        out += f"\n[{name}]\n" + dumps_toml(table, name)
    return out


def download(repo_id: str, *, revision: str | None, cache_dir: Path | None) -> str:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(repo_id, revision=revision, allow_patterns=ALLOW_PATTERNS, cache_dir=cache_dir)
    except LocalEntryNotFoundError as exc:
        raise ModelNotConfigured(
            f"cannot download {repo_id}@{revision or 'main'}: the hub is unreachable or HF_HUB_OFFLINE=1 "
            "is set; run `mlq models fetch` on a host with network, then copy the cache"
        ) from exc
