"""Torch threads per pool process: the cores this process may use (affinity, then a cgroup's CPU
quota, which os.cpu_count() does not see), shared among the pool processes."""

from __future__ import annotations

import os
from pathlib import Path

from workers.placement import default_torch_threads, usable_cores

AFFINITY = len(os.sched_getaffinity(0))


def cgroup(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_no_cgroup_limit_means_the_affinity(tmp_path: Path) -> None:
    assert usable_cores(tmp_path) == AFFINITY
    assert usable_cores(cgroup(tmp_path, {"cpu.max": "max 100000\n"})) == AFFINITY


def test_a_cgroup_v2_quota_caps_the_cores(tmp_path: Path) -> None:
    assert usable_cores(cgroup(tmp_path, {"cpu.max": "50000 100000\n"})) == 1  # half a core: still one thread
    assert usable_cores(cgroup(tmp_path, {"cpu.max": f"{150000 * AFFINITY} 100000\n"})) == AFFINITY  # above: affinity


def test_a_cgroup_v1_quota_caps_the_cores(tmp_path: Path) -> None:
    root = cgroup(tmp_path, {"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"})
    assert usable_cores(root) == 1
    unlimited = cgroup(tmp_path / "v1", {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"})
    assert usable_cores(unlimited) == AFFINITY


def test_the_cores_are_shared_among_pool_processes() -> None:
    cores = usable_cores()
    assert default_torch_threads(concurrency=1) == cores
    assert default_torch_threads(concurrency=cores * 4) == 1  # never zero
