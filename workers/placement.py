"""GPU pinning and CPU threads. Pinning must happen before torch is imported."""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

# Torch threads per pool process; `mlq worker --torch-threads`, default the usable cores over the
# pool processes. On a machine shared with the API and PostgreSQL, fewer can still help: a
# parallel region waits for its slowest thread, and one of them may have lost its core to those
# (bench/README.md, single-job latency).
THREADS_ENV = "MLQ_TORCH_THREADS"
# How OpenMP's idle threads wait: read once, when torch loads libgomp in a pool process.
WAIT_POLICY_ENV = "OMP_WAIT_POLICY"


def pin_gpu(gpu: int | None) -> None:
    """Make only GPU ``gpu`` visible to this process (and its children); None leaves it as is."""
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
        os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # the numbers nvidia-smi shows


def hide_gpus() -> None:
    os.environ["CUDA_VISIBLE_DEVICES"] = ""


def usable_cores(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """The cores this process may run on: its CPU affinity, capped by a cgroup CPU quota (a
    container's CPU limit, which ``os.cpu_count()`` does not see)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    for quota_file, period_file in (("cpu.max", None), ("cpu/cpu.cfs_quota_us", "cpu/cpu.cfs_period_us")):
        try:
            fields = (cgroup_root / quota_file).read_text().split()
            quota, period = fields[0], (fields[1] if period_file is None else (cgroup_root / period_file).read_text())
        except (OSError, IndexError):
            continue
        if quota not in ("max", "-1"):
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
        break
    return max(1, cores)


def default_torch_threads(*, concurrency: int) -> int:
    """Torch threads per pool process: the usable cores shared among the pool processes."""
    return max(1, usable_cores() // concurrency)


def let_waiting_threads_sleep() -> None:
    """``OMP_WAIT_POLICY=PASSIVE`` for the pool processes, unless the environment sets it: an
    OpenMP thread that waits for the next parallel region sleeps instead of spinning (GNU
    OpenMP's default spins up to 300,000 turns after each region). A spinning thread takes the
    core the API, PostgreSQL or the other pool processes need, and with the tiny classifier at
    two threads it doubled the model's CPU for the same wall time (bench/README.md, #15). Set
    before the pool forks: torch, and its OpenMP, load in each pool process after it."""
    os.environ.setdefault(WAIT_POLICY_ENV, "PASSIVE")


def configure_torch_threads() -> None:
    threads = int(os.environ.get(THREADS_ENV) or 0)
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


def run_per_gpu(gpus: Sequence[int], *, args: Sequence[str], metrics_port: int) -> int:
    """``mlq worker --gpus 0,1``: one ``mlq worker --gpu N`` process per GPU, each loading its
    own models (CUDA is never initialised here, the forking parent). Stops them all on SIGTERM or
    SIGINT, and when one exits, so a supervisor restarts the set. Returns an exit code."""
    host = socket.gethostname()
    children = []
    for index, gpu in enumerate(gpus):
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=str(gpu), CUDA_DEVICE_ORDER="PCI_BUS_ID")  # pinned from exec
        if metrics_port:
            env["MLQ_WORKER_METRICS_PORT"] = str(metrics_port + index)  # one /metrics per GPU process
        command = [sys.executable, "-m", "mlq.cli", "worker", *args, "--gpu", str(gpu)]
        children.append(subprocess.Popen([*command, "--name", f"mlq-gpu{gpu}-{os.getpid()}@{host}"], env=env))
    stop = {"signal": 0}

    def on_signal(signum: int, _: object) -> None:
        stop["signal"] = signum

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    code = 0
    while not stop["signal"]:
        exited = [child for child in children if child.poll() is not None]
        if exited:
            code = exited[0].returncode or 1
            break
        time.sleep(0.5)
    for child in children:  # warm shutdown: each finishes the jobs it is running
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        child.wait()
    return code
