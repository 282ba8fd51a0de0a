"""`mlq prune` as an operator runs it: a real process on a database of its own, a tenant's own
retention set with `mlq keys limits --retention-days`, and what it removed reported as JSON."""

from __future__ import annotations

import json
import subprocess

from sqlalchemy import text

from jobs.settings import Settings
from tests.conftest import MLQ, process_env, sessions_of, stack_of_its_own
from tests.integration.test_retention import add_jobs, tenant, with_delivery
from tests.services import Services


def mlq(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MLQ, *args], env=process_env(settings), capture_output=True, text=True, timeout=120)


def test_mlq_prune_removes_what_retention_passed_and_says_so(settings: Settings, services: Services) -> None:
    with stack_of_its_own(settings, services) as own, sessions_of(own) as sessions:
        weekly = tenant(sessions, "weekly")
        limits = mlq(own, "keys", "limits", "--tenant", "weekly", "--retention-days", "7")
        assert limits.returncode == 0 and "retention_days=7" in limits.stdout, limits.stderr
        old = add_jobs(sessions, weekly, n=5, age_days=10)  # past the tenant's 7 days, not the default 30
        with_delivery(sessions, weekly, job_id=old[0])
        kept = add_jobs(sessions, weekly, age_days=3) + add_jobs(sessions, weekly, status="running", age_days=10)

        pruned = mlq(own, "prune", "--batch-rows", "2")

        assert pruned.returncode == 0, pruned.stderr
        report = json.loads(pruned.stdout)
        assert (report["jobs"], report["webhook_deliveries"], report["batches"]) == (5, 1, 0)
        assert report["transactions"] == 4  # 2 + 2 + 1 jobs, then one look for unused uploads
        with sessions() as session:
            assert set(session.execute(text("SELECT id FROM jobs")).scalars()) == set(kept)
        again = json.loads(mlq(own, "prune").stdout)
        assert again["jobs"] == 0

        back = mlq(own, "keys", "limits", "--tenant", "weekly", "--retention-days", "-1")
        assert back.returncode == 0 and "retention_days=default" in back.stdout, back.stderr
        with sessions() as session:
            own_days = session.execute(text("SELECT retention_days FROM tenants WHERE id = :t"), {"t": weekly})
            assert own_days.scalar() is None
