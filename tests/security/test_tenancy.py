"""Tenants stay apart: another tenant's job, artifact, batch and results answer 404 (never
403, which would say they exist), and nothing of theirs can be cancelled; bad keys are 401."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.conftest import Api

DOG = (Path(__file__).resolve().parents[2] / "mlq" / "assets" / "dog.png").read_bytes()


def test_another_tenants_job_artifact_batch_and_results_are_404(
    api_without_workers: Api, key: str, other_key: str
) -> None:
    with api_without_workers.client(key) as owner:
        job = owner.post("/v1/jobs/upload", data={"kind": "image-classification"}, files={"image": ("dog.png", DOG)})
        assert job.status_code == 202, job.text
        job_id = job.json()["id"]
        assert owner.get(f"/v1/jobs/{job_id}/artifacts/input-image").content == DOG  # the owner reads it
        batch = owner.post(
            "/v1/batches", json={"kind": "embedding", "items": [{"custom_id": "a", "input": {"text": "x"}}]}
        )
        assert batch.status_code == 202, batch.text
        batch_id = batch.json()["id"]
    reads = [
        f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}?wait=1", f"/v1/jobs/{job_id}/artifacts",
        f"/v1/jobs/{job_id}/artifacts/input-image", f"/v1/batches/{batch_id}", f"/v1/batches/{batch_id}/results",
    ]  # fmt: skip
    with api_without_workers.client(other_key) as stranger:
        for path in reads:
            answer = stranger.get(path)
            assert answer.status_code == 404, (path, answer.status_code)
            assert job_id not in answer.text and batch_id not in answer.text
        for path in (f"/v1/jobs/{job_id}/cancel", f"/v1/batches/{batch_id}/cancel"):
            assert stranger.post(path).status_code == 404, path
        listed = stranger.get("/v1/jobs").json()["data"] + stranger.get("/v1/batches").json()["data"]
        assert job_id not in {item["id"] for item in listed} and batch_id not in {item["id"] for item in listed}
    with api_without_workers.client(key) as owner:  # the stranger's cancels changed nothing
        assert owner.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"
        assert owner.get(f"/v1/batches/{batch_id}").json()["status"] == "in_progress"


def test_missing_malformed_and_unknown_keys_are_401(api_without_workers: Api, key: str) -> None:
    with api_without_workers.client(key) as http:
        job_id = http.post("/v1/jobs", json={"kind": "embedding", "input": {"text": "x"}}).json()["id"]
    for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": "Basic b3BzOnMzY3JldA=="},
                    {"Authorization": "Bearer not-a-key"}, {"Authorization": f"Bearer {key[:-2]}xx"}):  # fmt: skip
        answer = httpx.get(f"{api_without_workers.url}/v1/jobs/{job_id}", headers=headers, timeout=30)
        assert answer.status_code == 401, headers
        assert answer.headers["www-authenticate"] == "Bearer"
