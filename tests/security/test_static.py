"""Rules read off the source: SQL only through bound parameters; safe model loading."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("jobs", "producer", "workers", "models", "mlq")
SQL_CALLS = {"text", "execute", "exec_driver_sql", "SQL"}


def sources() -> list[Path]:
    return [p for package in PACKAGES for p in (ROOT / package).rglob("*.py")]


def is_psycopg_sql(call: ast.Call) -> bool:
    """psycopg.sql.SQL("...").format(sql.Identifier(...)) quotes identifiers: that is the safe way."""
    receiver = getattr(call.func, "value", None)
    return isinstance(receiver, ast.Call) and getattr(receiver.func, "attr", "") == "SQL"


def built_sql_lines(tree: ast.AST) -> list[int]:
    """Lines where SQL text is built by f-string, % or + formatting, or str.format."""
    lines = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and node.args):
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        first = node.args[0]
        formatted = isinstance(first, ast.Call) and getattr(first.func, "attr", "") == "format"
        built = (
            isinstance(first, ast.JoinedStr)
            or (isinstance(first, ast.BinOp) and isinstance(first.op, ast.Mod | ast.Add))
            or (formatted and isinstance(first, ast.Call) and not is_psycopg_sql(first))
        )
        if name in SQL_CALLS and built:
            lines.append(node.lineno)
    return lines


def test_no_sql_is_built_from_f_strings_or_formatting() -> None:
    offences = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in sources()
        for line in built_sql_lines(ast.parse(path.read_text(), filename=str(path)))
    ]
    assert offences == []


def test_the_rule_above_can_fail() -> None:
    bad = [
        'session.execute(text(f"SELECT * FROM jobs WHERE id = {job_id}"))',
        'session.execute(text("SELECT * FROM jobs WHERE id = %s" % job_id))',
        'session.execute(text("SELECT * FROM jobs WHERE id = {}".format(job_id)))',
    ]
    assert all(built_sql_lines(ast.parse(code)) for code in bad)
    good = 'conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))'
    assert built_sql_lines(ast.parse(good)) == []


def test_weights_load_as_safetensors_without_remote_code() -> None:
    from jobs.modelsfile import ModelSpec
    from models.loading import pretrained_kwargs

    pinned = "0123456789abcdef0123456789abcdef01234567"
    kwargs = pretrained_kwargs(ModelSpec(kind="embedding", model="org/model", revision=pinned), "org/model")
    assert kwargs["use_safetensors"] is True and kwargs["trust_remote_code"] is False
    assert kwargs["revision"] == pinned
    text = "\n".join(p.read_text() for p in (ROOT / "models").rglob("*.py"))
    assert "trust_remote_code=True" not in text and "torch.load(" not in text and "import pickle" not in text


def test_hub_models_load_only_at_a_pinned_commit() -> None:
    from jobs.errors import ModelNotConfigured
    from jobs.modelsfile import ModelSpec, load_models_file
    from models.loading import pretrained_kwargs

    production = load_models_file("production")
    for spec in production.kinds.values():  # as shipped: "main" until `mlq models fetch --pin` writes commits
        with pytest.raises(ModelNotConfigured, match="not pinned to a commit"):
            pretrained_kwargs(spec, spec.model)
    spec = ModelSpec(kind="chat", model="org/model", revision="main")
    assert pretrained_kwargs(spec, "org/model", allow_unpinned=True)["revision"] == "main"  # a deliberate choice
    # the worker's choice (MLQ_ALLOW_UNPINNED_MODELS, or standalone) travels into each adapter it makes
    from models.registry import create_adapter

    for allowed in (False, True):
        adapter = create_adapter(spec, data_dir=Path("/nonexistent"), allow_unpinned=allowed)
        if allowed:
            assert adapter.pretrained_kwargs()["revision"] == "main"
        else:
            with pytest.raises(ModelNotConfigured, match="not pinned to a commit"):
                adapter.pretrained_kwargs()
