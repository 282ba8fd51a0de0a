"""`mlq standalone` as the README promises it, as a real process on PostgreSQL and Redis
databases of its own (set, so no embedded servers) and a models file of two kind groups: it
prints Flower's URL and a fresh password that work, splits the cores among its workers, and
Ctrl-C (SIGINT to it alone) stops every process it started."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import psutil

from jobs.modelsfile import load_models_file
from jobs.secrets import is_placeholder
from jobs.settings import Settings
from mlq.embedded import free_port
from tests.conftest import ARTIFACTS, MLQ, process_env, stack_of_its_own
from tests.services import Services
from workers.placement import THREADS_ENV, usable_cores

TWO_GROUPS = """profile = "demo"

[defaults]
device = "auto"
max_batch_size = 32
time_limit_s = 120
max_attempts = 3

[kinds.text-classification]
model = "builtin:tiny-text-classifier"
group = "text"

[kinds.text-generation]
model = "builtin:tiny-gpt2"
group = "generation"
limits = { max_new_tokens = 64 }
"""


def read_until(log: Path, marker: str, proc: subprocess.Popen[bytes], timeout_s: float = 180) -> str:
    deadline = time.monotonic() + timeout_s
    while marker not in (said := log.read_text(errors="replace")):
        assert proc.poll() is None and time.monotonic() < deadline, said[-3000:]
        time.sleep(0.2)
    return said


def flower_answers(url: str, auth: tuple[str, str] | None, timeout_s: float = 60) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return httpx.get(url, auth=auth, timeout=5).status_code
        except httpx.HTTPError:
            assert time.monotonic() < deadline, f"Flower at {url} never answered"
            time.sleep(0.3)


def workers_threads(children: list[psutil.Process]) -> dict[str, int]:
    """Each worker's kinds and the torch threads standalone gave it (its command line)."""
    found = {}
    for child in children:
        args = child.cmdline()
        if "worker" in args and "--kinds" in args and "--torch-threads" in args:
            found[args[args.index("--kinds") + 1]] = int(args[args.index("--torch-threads") + 1])
    return found


def test_standalone_prints_flower_splits_the_cores_and_stops_everything_on_ctrl_c(
    settings: Settings, services: Services, data_dir: Path, tmp_path: Path
) -> None:
    models = tmp_path / "two-groups.toml"
    models.write_text(TWO_GROUPS)
    assert len(load_models_file(models).groups()) == 2
    (data_dir / "models").mkdir(exist_ok=True)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "models").symlink_to(data_dir / "models", target_is_directory=True)  # built once a run
    port = free_port()
    ARTIFACTS.mkdir(exist_ok=True)
    log = ARTIFACTS / f"promises-standalone-{os.getpid()}.log"
    with stack_of_its_own(settings, services) as mine, open(log, "wb") as out:
        env = process_env(mine, MLQ_MODELS=str(models))
        env.pop(THREADS_ENV, None)  # what standalone chooses, not what the caller set
        env.pop("MLQ_FLOWER_BASIC_AUTH", None)
        standalone = subprocess.Popen(
            [MLQ, "standalone", "--port", str(port), "--data-dir", str(tmp_path / "data")],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            said = read_until(log, "serving; Ctrl-C stops every process", standalone)
            found = re.search(r"Flower\s+(http://127\.0\.0\.1:\d+)\s+\(user:password (\S+):(\S+)\)", said)
            assert found, said[-2000:]
            url, user, password = found.groups()
            assert len(password) >= 16 and not is_placeholder(password)
            assert flower_answers(url, (user, password)) == 200  # the printed credentials work
            assert flower_answers(url, None) == 401 and flower_answers(url, (user, password + "x")) == 401

            children = psutil.Process(standalone.pid).children(recursive=True)
            threads = workers_threads(children)
            assert set(threads) == {"text-classification", "text-generation"}, threads
            share = max(1, usable_cores() // 2)
            assert set(threads.values()) == {share}, (threads, usable_cores())  # not every core each

            before = {p.pid: p for p in psutil.Process(standalone.pid).children(recursive=True)}
            assert len(before) >= 5  # the API, two workers (and their pool processes), the reconciler, Flower
            os.kill(standalone.pid, signal.SIGINT)  # to it alone: it must stop the others itself
            assert standalone.wait(timeout=60) == 0
            _, alive = psutil.wait_procs(list(before.values()), timeout=10)
            assert not alive, [(p.pid, p.cmdline()[:6]) for p in alive]
            for stopped in (f"http://127.0.0.1:{port}/healthz", url):
                try:
                    httpx.get(stopped, timeout=1)
                    raise AssertionError(f"{stopped} still answers after Ctrl-C")
                except httpx.HTTPError:
                    pass
        finally:
            if standalone.poll() is None:
                os.killpg(standalone.pid, signal.SIGKILL)
                standalone.wait()
