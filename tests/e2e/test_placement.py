"""`mlq worker --gpus 0,1`: one worker process per GPU, each pinned before torch loads, each a
Celery node of its own; SIGTERM stops them all. (This machine has no GPU: the pinning is
read from each process's environment, and the jobs run on the CPU.)"""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from pathlib import Path

from sqlalchemy import select

from jobs.settings import Settings
from jobs.tables import Job
from producer.publish import Publisher
from tests.conftest import Proc, create_key, process_env, sessions_of, stack_of_its_own, start_api
from tests.services import Services


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


def test_one_worker_process_per_gpu(settings: Settings, services: Services) -> None:
    with stack_of_its_own(settings, services) as mine, sessions_of(mine) as sessions:
        # --torch-threads is passed on to each GPU process (an option they did not know would stop them)
        command = ["worker", "--kinds", "embedding", "--gpus", "0,1", "--torch-threads", "1"]
        supervisor = Proc("gpus-worker", command, process_env(mine))
        api, api_proc = start_api(mine, "gpus-api")
        publisher = Publisher(mine)
        try:
            deadline = time.monotonic() + 180
            while len(nodes := sorted(n for r in publisher.app.control.ping(timeout=1) or [] for n in r)) < 2:
                assert time.monotonic() < deadline and supervisor.alive(), supervisor.tail()
            assert [n.split("-")[1] for n in nodes] == ["gpu0", "gpu1"], nodes
            children = subprocess.run(["pgrep", "-P", str(supervisor.popen.pid)], capture_output=True, text=True)
            pinned = sorted(environ(int(pid)).get("CUDA_VISIBLE_DEVICES", "") for pid in children.stdout.split())
            assert pinned == ["0", "1"]
            with api.client(create_key(mine, f"gpus-{uuid.uuid4().hex[:6]}")) as http:
                jobs = [
                    http.post("/v1/jobs", json={"kind": "embedding", "input": {"text": f"t{i}"}}).json()
                    for i in range(20)
                ]
                done = [http.get(f"/v1/jobs/{j['id']}", params={"wait": 120}).json() for j in jobs]
            assert {j["status"] for j in done} == {"succeeded"}
            with sessions() as session:
                ran_on = session.execute(select(Job.worker).where(Job.id.in_([j["id"] for j in done]))).scalars()
                assert {w.split("/")[0] for w in ran_on if w} <= set(nodes)
            supervisor.popen.send_signal(signal.SIGTERM)
            supervisor.popen.wait(timeout=60)
            gone = subprocess.run(["pgrep", "-f", f"mlq-gpu[01]-{supervisor.popen.pid}@"], capture_output=True)
            assert gone.returncode == 1  # no worker left behind
        finally:
            publisher.close()
            api_proc.stop()
            supervisor.stop()


def test_the_pool_s_openmp_threads_sleep_while_they_wait_unless_told_otherwise(
    settings: Settings, services: Services
) -> None:
    """`mlq worker` gives its pool processes OMP_WAIT_POLICY=PASSIVE: a waiting OpenMP thread
    sleeps at once rather than spin (GNU OpenMP's default: 300,000 turns) on a core the API or
    PostgreSQL needs. A policy the operator set is kept. libgomp prints what it read
    (OMP_DISPLAY_ENV=VERBOSE) when torch loads in the pool process."""
    with stack_of_its_own(settings, services) as mine:
        base = {k: v for k, v in process_env(mine, OMP_DISPLAY_ENV="VERBOSE").items() if k != "OMP_WAIT_POLICY"}
        command = ["worker", "--kinds", "text-classification", "--concurrency", "1"]
        workers = {  # what libgomp read: its wait policy and its spin count
            ("'PASSIVE'", "'0'"): Proc("omp-default-worker", command, base),
            ("'ACTIVE'", "'30000000000'"): Proc("omp-active-worker", command, {**base, "OMP_WAIT_POLICY": "ACTIVE"}),
        }
        try:
            deadline = time.monotonic() + 180
            for expected, proc in workers.items():
                while "loaded text-classification model" not in (log := proc.log_path.read_text(errors="replace")):
                    assert time.monotonic() < deadline and proc.alive(), proc.tail()
                    time.sleep(0.2)
                assert "OPENMP DISPLAY ENVIRONMENT BEGIN" in log, proc.tail()  # torch loaded in the pool

                def read(name: str, log: str = log) -> set[str]:  # one line per OpenMP runtime loaded
                    return {line.split("=", 1)[1].strip() for line in log.splitlines() if f"  {name} =" in line}

                assert (read("OMP_WAIT_POLICY"), read("GOMP_SPINCOUNT")) == ({expected[0]}, {expected[1]}), proc.tail()
        finally:
            for proc in workers.values():
                proc.stop()
