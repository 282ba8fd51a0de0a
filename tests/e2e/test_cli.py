"""The command line against a running API: `mlq submit`, `mlq batch …`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.conftest import MLQ, Api, process_env


def mlq(api: Api, key: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = process_env(api.settings, MLQ_API_URL=api.url, MLQ_API_KEY=key)
    return subprocess.run([MLQ, *args], env=env, capture_output=True, text=True, timeout=300)


def test_submit_waits_and_prints_the_result(stack: Api, key: str) -> None:
    done = mlq(stack, key, "submit", "embedding", "--input", '{"text": "kitten"}', "--wait", "60")
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert job["status"] == "succeeded" and job["output"]["dimensions"] == 384
    bad = mlq(stack, key, "submit", "embedding", "--input", '{"txt": "typo"}')
    assert bad.returncode == 1 and "txt" in bad.stderr


def test_batch_submit_wait_results_and_status(stack: Api, key: str, tmp_path: Path) -> None:
    posts = tmp_path / "posts.jsonl"
    posts.write_text(
        "".join(json.dumps({"custom_id": f"p{i}", "input": {"text": f"post {i}"}}) + "\n" for i in range(30))
    )
    submitted = mlq(stack, key, "batch", "submit", str(posts), "--kind", "moderation", "--wait")
    assert submitted.returncode == 0, submitted.stderr
    final = json.loads(submitted.stdout[submitted.stdout.index("{") :])
    assert final["status"] == "completed" and final["counts"]["succeeded"] == 30
    out = tmp_path / "results.jsonl"
    fetched = mlq(stack, key, "batch", "results", final["id"], "-o", str(out))
    assert fetched.returncode == 0 and "30 results" in fetched.stdout
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["custom_id"] for r in lines] == [f"p{i}" for i in range(30)]
    status = json.loads(mlq(stack, key, "batch", "status", final["id"]).stdout)
    assert status["counts"]["total"] == 30
    refused = tmp_path / "bad.jsonl"
    refused.write_text('{"custom_id": "a", "input": {"text": "x"}}\n{"custom_id": "a", "input": {"text": "y"}}\n')
    bad = mlq(stack, key, "batch", "submit", str(refused), "--kind", "moderation")
    assert bad.returncode == 1 and "duplicate" in bad.stderr
