"""API keys as the README promises them, through the real CLI and API: 256 random bits,
stored as SHA-256 and nowhere else (so shown once), `read` and `admin` answer 403 without
the scope, and a revoked key answers 401 within 5 s."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import time
import uuid

import psycopg
from psycopg import sql

from jobs.db import libpq_url
from jobs.settings import Settings
from tests.conftest import MLQ, Api, create_key, process_env

REVOKED_WITHIN_S = 5.0  # the README's bound (the API caches a key for up to 5 s)


def places_holding(database_url: str, needle: str) -> list[str]:
    """Every table of the database with a row whose text contains ``needle``."""
    found = []
    with psycopg.connect(libpq_url(database_url)) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
        ).fetchall()
        for (table,) in tables:
            query = sql.SQL("SELECT count(*) FROM {} t WHERE strpos(t::text, %s) > 0").format(sql.Identifier(table))
            row = conn.execute(query, (needle,)).fetchone()
            if row and row[0]:
                found.append(table)
    return found


def test_a_key_carries_256_random_bits_and_is_stored_only_as_its_sha256(settings: Settings) -> None:
    tenant = f"keys-{uuid.uuid4().hex[:6]}"
    made = [create_key(settings, tenant) for _ in range(2)]
    secrets = []
    for key in made:
        name, prefix, secret = key.split("_", 2)
        assert name == "mlq" and len(prefix) == 12
        raw = base64.urlsafe_b64decode(secret + "=" * (-len(secret) % 4))
        assert len(raw) == 32 and base64.urlsafe_b64encode(raw).decode().rstrip("=") == secret  # 256 bits
        secrets.append(secret)
        with psycopg.connect(libpq_url(settings.require_database_url())) as conn:
            stored = conn.execute("SELECT key_hash FROM api_keys WHERE prefix = %s", (prefix,)).fetchall()
        assert stored == [(hashlib.sha256(key.encode()).hexdigest(),)]
        # nothing holds the key or its secret: no command or route can show it a second time
        assert places_holding(settings.require_database_url(), secret) == []
        assert places_holding(settings.require_database_url(), stored[0][0]) == ["api_keys"]  # the search finds
    assert secrets[0] != secrets[1]


def test_read_and_admin_answer_403_without_the_scope(api_without_workers: Api) -> None:
    settings, tenant = api_without_workers.settings, f"scopes-{uuid.uuid4().hex[:6]}"
    submitter = create_key(settings, tenant, scopes="submit")
    reader = create_key(settings, tenant, scopes="submit,read")
    admin = create_key(settings, tenant, scopes="submit,read,admin")
    with api_without_workers.client(submitter) as http:
        job = http.post("/v1/jobs", json={"kind": "embedding", "input": {"text": "x"}}).json()
        batch = http.post(
            "/v1/batches", json={"kind": "embedding", "items": [{"custom_id": "a", "input": {"text": "x"}}]}
        )
        for path in ("/v1/jobs", f"/v1/jobs/{job['id']}", f"/v1/jobs/{job['id']}/artifacts",
                     f"/v1/batches/{batch.json()['id']}", f"/v1/batches/{batch.json()['id']}/results"):  # fmt: skip
            refused = http.get(path)
            assert refused.status_code == 403 and "'read'" in refused.json()["detail"], (path, refused.text)
        assert http.get(f"/v1/jobs/{job['id']}", params={"wait": 1}).status_code == 403
    with api_without_workers.client(reader) as http:
        assert http.get(f"/v1/jobs/{job['id']}").status_code == 200  # the same call with the scope
        for path in ("/v1/ops/overview", f"/v1/ops/jobs/{job['id']}"):
            refused = http.get(path)
            assert refused.status_code == 403 and "'admin'" in refused.json()["detail"], (path, refused.text)
    with api_without_workers.client(admin) as http:
        assert http.get("/v1/ops/overview").status_code == 200
        assert http.get(f"/v1/ops/jobs/{job['id']}").status_code == 200


def test_a_revoked_key_answers_401_within_5_s(api_without_workers: Api) -> None:
    key = create_key(api_without_workers.settings, f"revoke-{uuid.uuid4().hex[:6]}", scopes="read")
    with api_without_workers.client(key) as http:
        assert http.get("/v1/jobs").status_code == 200  # known to the API: cached from now on
        started = time.monotonic()  # before the revocation commits: what is measured is an upper bound
        revoked = subprocess.run(
            [MLQ, "keys", "revoke", key.split("_")[1]],
            env=process_env(api_without_workers.settings),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert revoked.returncode == 0, revoked.stderr
        while (answer := http.get("/v1/jobs")).status_code == 200:
            assert time.monotonic() - started < REVOKED_WITHIN_S + 0.5, "the revoked key still works"
            time.sleep(0.1)
        took_s = time.monotonic() - started
        assert answer.status_code == 401 and took_s <= REVOKED_WITHIN_S + 0.5, (answer.status_code, took_s)
        assert http.get("/v1/jobs").status_code == 401  # and it stays refused
