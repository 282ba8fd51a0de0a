"""Inputs given by URL, downloaded by the API at submission: on the event loop (a slow server
holds no thread), within a total deadline, and bounded per tenant and overall.

A tenant already downloading ``input_fetches_per_tenant`` URLs gets a 429 for the next one
at once, as does anyone while ``input_fetches_max`` downloads run: the counts are this API
process's own (one event loop, so no lock).
"""

from __future__ import annotations

import uuid
from collections import Counter

from jobs.errors import InvalidInput, MlqError, OverLimit
from jobs.settings import Settings
from producer.netfetch import afetch

RETRY_AFTER_S = 2  # what a refused download is told to wait


class Downloads:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.running = Counter[uuid.UUID]()  # downloads in flight per tenant

    async def get(self, url: str, *, tenant_id: uuid.UUID, max_bytes: int) -> tuple[bytes, str]:
        """The file at ``url`` and its content type; InvalidInput says why not, OverLimit when over a bound."""
        settings = self.settings
        if self.running[tenant_id] >= settings.input_fetches_per_tenant:
            raise OverLimit(
                f"this tenant has {self.running[tenant_id]} inputs by URL downloading; the limit is "
                f"input_fetches_per_tenant={settings.input_fetches_per_tenant}: retry, or upload the files",
                retry_after_s=RETRY_AFTER_S,
            )
        if self.running.total() >= settings.input_fetches_max:
            raise OverLimit(
                f"the API is downloading input_fetches_max={settings.input_fetches_max} inputs by URL; "
                "retry, or upload the files",
                retry_after_s=RETRY_AFTER_S,
            )
        self.running[tenant_id] += 1
        try:
            answer = await afetch(
                url, max_bytes=max_bytes, timeout_s=settings.input_fetch_timeout_s, allow_hosts=settings.allow_hosts
            )
        except MlqError as exc:  # refused (unsafe address, too large) or failed (timeout, no such host)
            raise InvalidInput(f"{exc.code}: {exc}") from None
        finally:
            self.running[tenant_id] -= 1
            if not self.running[tenant_id]:
                del self.running[tenant_id]
        if not 200 <= answer.status < 300:
            raise InvalidInput(f"the URL answered HTTP {answer.status}; it must answer 200 with the file")
        return answer.body, answer.headers.get("content-type", "application/octet-stream").split(";")[0]
