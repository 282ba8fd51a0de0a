"""The Python client: ``Client(url, api_key).submit("embedding", {"text": "..."}, wait_s=10)``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx

TERMINAL = {"succeeded", "failed", "cancelled"}


class ApiError(Exception):
    """The API answered with an error status; ``status`` and ``detail`` say why."""

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail

    @classmethod
    def of(cls, response: httpx.Response) -> ApiError:
        """The error an answer says: its JSON ``detail``, or its text."""
        try:
            detail = response.json().get("detail")
        except ValueError:
            detail = response.text
        return cls(response.status_code, detail)


class Client:
    first_wait_s = 30.0  # submit with wait: the POST itself waits this long at most (servers allow 60 s)

    def __init__(self, base_url: str, api_key: str, *, timeout_s: float = 30.0) -> None:
        self.timeout_s = timeout_s
        self.batches = BatchClient(self)
        self.http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout_s,
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise ApiError.of(response)
        return response.json()

    def submit(
        self,
        kind: str,
        input: dict[str, Any],
        *,
        priority: int | None = None,
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        wait_s: float = 0,
    ) -> dict[str, Any]:
        """Submit a job; with ``wait_s``, wait up to that long for it to finish."""
        body: dict[str, Any] = {"kind": kind, "input": input}
        if priority is not None:
            body["priority"] = priority
        if metadata:
            body["metadata"] = metadata
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        first_s = min(wait_s, self.first_wait_s)  # the first wait rides on the POST: one round trip
        params = {"wait": first_s} if first_s > 0 else {}
        job: dict[str, Any] = self._call(
            "POST", "/v1/jobs", json=body, headers=headers, params=params, timeout=self.timeout_s + first_s
        )
        if job["status"] in TERMINAL or wait_s <= first_s:
            return job
        return self.wait(job["id"], wait_s=wait_s - first_s)

    def get(self, job_id: str, *, wait_s: float = 0) -> dict[str, Any]:
        params = {"wait": wait_s} if wait_s else {}
        result: dict[str, Any] = self._call("GET", f"/v1/jobs/{job_id}", params=params, timeout=self.timeout_s + wait_s)
        return result

    def wait(self, job_id: str, *, wait_s: float, step_s: float = 30.0) -> dict[str, Any]:
        """Long-poll until the job finishes or ``wait_s`` has passed."""
        import time

        deadline = time.monotonic() + wait_s
        while True:
            remaining = deadline - time.monotonic()
            job = self.get(job_id, wait_s=max(0.0, min(step_s, remaining)))
            if job["status"] in TERMINAL or remaining <= 0:
                return job

    def list_jobs(
        self, *, status: str | None = None, kind: str | None = None, limit: int = 50, cursor: str | None = None
    ) -> dict[str, Any]:
        params = {k: v for k, v in {"status": status, "kind": kind, "limit": limit, "cursor": cursor}.items() if v}
        result: dict[str, Any] = self._call("GET", "/v1/jobs", params=params)
        return result

    def cancel(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", f"/v1/jobs/{job_id}/cancel")
        return result

    def artifacts(self, job_id: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", f"/v1/jobs/{job_id}/artifacts")
        return result

    def artifact(self, job_id: str, name: str) -> bytes:
        """The bytes of one artifact (a generated PNG or WAV, an uploaded input)."""
        response = self.http.get(f"/v1/jobs/{job_id}/artifacts/{name}")
        if response.status_code >= 400:
            raise ApiError.of(response)
        return response.content

    def upload(
        self,
        kind: str,
        files: dict[str, tuple[str, bytes]],
        *,
        input: dict[str, Any] | None = None,
        priority: int | None = None,
    ) -> dict[str, Any]:
        """Submit a job whose binary inputs are sent as files: ``{"audio": ("clip.wav", data)}``."""
        import json

        form = {"kind": kind, "input": json.dumps(input or {})}
        if priority is not None:
            form["priority"] = str(priority)
        result: dict[str, Any] = self._call("POST", "/v1/jobs/upload", data=form, files=files)
        return result

    def models(self) -> list[dict[str, Any]]:
        """The kinds served here, each with its model, limits and schemas (``id`` is the kind)."""
        result: list[dict[str, Any]] = self._call("GET", "/v1/models")["data"]
        return result


class BatchClient:
    """Bulk runs over the same connection: ``Client(...).batches.submit("posts.jsonl", kind="moderation")``."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def submit(
        self,
        path: str,
        *,
        kind: str | None = None,
        priority: int | None = None,
        metadata: dict[str, Any] | None = None,
        webhook_url: str | None = None,
    ) -> dict[str, Any]:
        import json
        from pathlib import Path

        form = {k: v for k, v in {"kind": kind, "webhook_url": webhook_url}.items() if v}
        if priority is not None:
            form["priority"] = str(priority)
        if metadata:
            form["metadata"] = json.dumps(metadata)
        with Path(path).open("rb") as file:
            result: dict[str, Any] = self.client._call(
                "POST", "/v1/batches", data=form, files={"file": (Path(path).name, file, "application/jsonl")}
            )
        return result

    def get(self, batch_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.client._call("GET", f"/v1/batches/{batch_id}")
        return result

    def list(self, *, limit: int = 20, cursor: str | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        result: dict[str, Any] = self.client._call("GET", "/v1/batches", params=params)
        return result

    def cancel(self, batch_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.client._call("POST", f"/v1/batches/{batch_id}/cancel")
        return result

    def results(self, batch_id: str, *, status: str | None = None) -> Iterator[bytes]:
        """The results as JSONL lines (bytes, newline included), streamed."""
        params = {"status": status} if status else {}
        with self.client.http.stream("GET", f"/v1/batches/{batch_id}/results", params=params) as response:
            if response.status_code >= 400:
                response.read()
                raise ApiError.of(response)
            for line in response.iter_lines():
                yield (line + "\n").encode()
