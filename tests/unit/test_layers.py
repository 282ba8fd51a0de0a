"""The folder rules of the README (Where things live), checked on the source and in a fresh interpreter."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# folder -> top-level modules it must never import
FORBIDDEN = {
    "jobs": {"producer", "workers", "models", "mlq", "torch", "celery", "fastapi", "transformers"},
    "producer": {"workers", "models", "mlq", "torch", "transformers", "torchaudio", "diffusers"},
    "models": {"celery", "kombu", "workers", "producer", "mlq", "fastapi"},
    "workers": {"producer", "mlq", "fastapi"},
}


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_folder_imports_only_what_it_may(folder: str) -> None:
    offences = {
        str(path.relative_to(ROOT)): sorted(imported_modules(path) & FORBIDDEN[folder])
        for path in (ROOT / folder).rglob("*.py")
    }
    assert {k: v for k, v in offences.items() if v} == {}


def test_api_process_never_loads_torch() -> None:
    code = (
        "import sys; import producer.app, producer.cli, mlq.cli; producer.app.create_app(); "
        "heavy = [m for m in ('torch', 'transformers', 'torchaudio') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_worker_parent_imports_no_torch_before_fork() -> None:
    """The Celery parent process imports workers.app; models load only in pool processes."""
    code = (
        "import os, sys; os.environ['MLQ_REDIS_URL'] = 'redis://127.0.0.1:1/0'; "
        "import workers.app; sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


MAX_LINES = 400  # STYLE.md: a file over this has grown more than one job; split it along them


def test_no_python_file_is_over_400_lines() -> None:
    tracked = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True)
    paths = [ROOT / name for name in tracked.stdout.split()]
    assert len(paths) > 100  # the whole tree was listed
    over = {
        str(p.relative_to(ROOT)): n for p in paths if p.exists() and (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert over == {}


def choices_of_commit_mode(path: Path) -> list[str]:
    """Where ``path`` picks how a write commits: ``jobs.db.writing``, an AUTOCOMMIT isolation level."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if (
            isinstance(node, ast.ImportFrom)
            and node.module == "jobs.db"
            and any(a.name == "writing" for a in node.names)
        ):
            found.append(f"imports writing (line {node.lineno})")
        elif isinstance(node, ast.Constant) and node.value == "AUTOCOMMIT":
            found.append(f"AUTOCOMMIT (line {node.lineno})")
        elif isinstance(node, ast.keyword) and node.arg == "autocommit":
            found.append(f"autocommit= (line {node.lineno})")
    return found


def test_only_the_lifecycle_and_the_store_choose_how_a_write_commits() -> None:
    """One statement commits on its own, several in a transaction: which one a write is, only
    the code that writes it knows (``jobs.lifecycle.claim_jobs`` / ``record``,
    ``jobs.store.accept_jobs``). The worker and the API pass their sessions and never choose.
    The API's waiter listens on a connection of its own in autocommit (LISTEN needs it): the
    one exception, and it writes nothing."""
    allowed = {"producer/waiter.py"}
    found = {
        str(path.relative_to(ROOT)): choices
        for folder in ("producer", "workers", "mlq")
        for path in (ROOT / folder).rglob("*.py")
        if (choices := choices_of_commit_mode(path)) and str(path.relative_to(ROOT)) not in allowed
    }
    assert found == {}
    assert choices_of_commit_mode(ROOT / "jobs" / "lifecycle" / "_recording.py")  # the check sees a choice
