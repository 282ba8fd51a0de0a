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


def one_line_error(run: subprocess.CompletedProcess[str]) -> str:
    """The command failed with status 1 and said why in one line on stderr, no traceback."""
    assert run.returncode == 1, (run.returncode, run.stdout, run.stderr)
    said = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(said) == 1 and said[0].startswith("mlq: ") and "Traceback" not in run.stderr, run.stderr
    return said[0]


def test_cli_errors_are_one_line_saying_what_to_do(stack: Api, key: str, tmp_path: Path) -> None:
    assert "no API key" in one_line_error(mlq(stack, "", "submit", "embedding", "--input", '{"text": "x"}'))
    unreachable = mlq(stack, key, "batch", "status", "x", "--api-url", "http://127.0.0.1:1")
    assert "cannot reach http://127.0.0.1:1" in one_line_error(unreachable) and "MLQ_API_URL" in unreachable.stderr
    missing = one_line_error(mlq(stack, key, "batch", "status", "00000000-0000-0000-0000-000000000000"))
    assert "404" in missing and "no such batch" in missing
    assert "401" in one_line_error(mlq(stack, "mlq_wrong_key", "batch", "status", "x"))
    assert "422" in one_line_error(mlq(stack, key, "batch", "status", "not-a-uuid"))
    assert "no such file" in one_line_error(mlq(stack, key, "batch", "submit", str(tmp_path / "absent.jsonl")))
    usage = mlq(stack, key, "submit")  # a usage error stays Click's, status 2
    assert usage.returncode == 2


def test_operator_commands_say_when_postgresql_is_away(stack: Api) -> None:
    env = process_env(stack.settings, MLQ_DATABASE_URL="postgresql+psycopg://postgres@127.0.0.1:1/none")
    for args in (["migrate"], ["keys", "create", "--tenant", "nobody"]):
        run = subprocess.run([MLQ, *args], env=env, capture_output=True, text=True, timeout=120)
        assert "cannot reach PostgreSQL" in one_line_error(run) and "MLQ_DATABASE_URL" in run.stderr


def test_version_and_one_line_json_on_stdout(stack: Api, key: str, tmp_path: Path) -> None:
    version = mlq(stack, key, "--version")
    assert version.returncode == 0 and version.stdout.strip() == "mlq 0.1.0"
    done = mlq(stack, key, "submit", "embedding", "--input", '{"text": "kitten"}', "--wait", "60")
    assert done.returncode == 0 and done.stdout.count("\n") == 1  # one line, 384 floats included
    assert json.loads(done.stdout)["output"]["dimensions"] == 384
    posts = tmp_path / "posts.jsonl"
    posts.write_text("".join(json.dumps({"custom_id": f"p{i}", "input": {"text": f"p {i}"}}) + "\n" for i in range(5)))
    waited = mlq(stack, key, "batch", "submit", str(posts), "--kind", "moderation", "--wait")
    assert waited.returncode == 0 and json.loads(waited.stdout)["status"] == "completed"  # stdout is JSON alone
    assert "items accepted" in waited.stderr
