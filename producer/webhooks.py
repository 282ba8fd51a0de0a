"""The webhook dispatcher: a thread in each API process that sends the outbox.

Workers never send webhooks (a slow receiver must not hold a GPU); they only
write the outbox row in the transaction that finishes the job. The body is the
job (or batch) as the API shows it, signed with the tenant's secret::

    Mlq-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>

Failed attempts are retried with exponential backoff and jitter, then marked failed.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import threading
import time
import uuid
from collections import Counter

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from jobs import batches, metrics, store, webhooks
from jobs.backoff import backoff_s
from jobs.errors import MlqError
from jobs.settings import Settings
from jobs.tables import Tenant
from producer.netfetch import afetch
from producer.schemas import BatchView, JobView

log = logging.getLogger("mlq.webhooks")

MAX_RESPONSE_BYTES = 64_000  # a receiver's answer is read but ignored
AT_ONCE = 16  # deliveries in flight per API process
PER_TENANT_AT_ONCE = 4  # of them, one tenant's: its slow receivers hold no other tenant's places


def sign(secret: str, body: bytes, *, timestamp: int) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(secret: str, body: bytes, header: str, *, tolerance_s: float = 300) -> bool:
    """What a receiver does: recompute the signature, compare in constant time, refuse stale ones."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    timestamp = int(parts.get("t", "0"))
    if abs(time.time() - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, body, timestamp=timestamp), header)


class Dispatcher:
    """Sends the outbox from a thread of its own, on an event loop of its own: up to
    ``AT_ONCE`` deliveries are in flight together, at most ``PER_TENANT_AT_ONCE`` of one
    tenant, and a due delivery is claimed as soon as a place frees up. A slow receiver (held
    at most 3 x ``webhook_timeout_s``) holds its own places, never another tenant's."""

    def __init__(self, *, sessions: sessionmaker[Session], settings: Settings) -> None:
        self.sessions = sessions
        self.settings = settings
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="mlq-webhooks", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=10)

    async def _run(self) -> None:
        sending: dict[asyncio.Task[None], uuid.UUID] = {}  # in flight, with its tenant
        while not self.stopping.is_set():
            busy = Counter(sending.values())
            claimed: list[webhooks.Due] = []
            if len(sending) < AT_ONCE:
                try:
                    claimed = self.claim(limit=AT_ONCE - len(sending), busy=busy)
                except Exception:  # the database may be away; try again after a pause
                    log.exception("claiming due webhooks failed")
            for delivery in claimed:
                task = asyncio.create_task(self._send(delivery))
                sending[task] = delivery.tenant_id
                task.add_done_callback(sending.pop)
            await asyncio.sleep(0.05 if claimed or len(sending) >= AT_ONCE else self.settings.webhook_poll_s)
        for task in sending:  # claimed but not recorded: their claim's lease sends them again later
            task.cancel()

    def claim(self, *, limit: int, busy: Counter[uuid.UUID]) -> list[webhooks.Due]:
        full = [tenant for tenant, n in busy.items() if n >= PER_TENANT_AT_ONCE]
        with self.sessions.begin() as session:
            due = webhooks.claim_due(session, limit=limit, skip_tenants=full)
        return due

    async def _send(self, delivery: webhooks.Due) -> None:
        try:
            await self.deliver(delivery)
        except Exception as exc:  # the database went away: the claim's lease brings the delivery back
            log.warning("webhook %s: not recorded (%s); it is sent again later", delivery.id, exc)

    def body(self, session: Session, delivery: webhooks.Due) -> bytes:
        if delivery.job_id is not None:
            job = store.get_job(session, tenant_id=delivery.tenant_id, job_id=delivery.job_id)
            payload = {"event": "job.finished", "job": JobView.of(job).model_dump(mode="json") if job else None}
        else:
            assert delivery.batch_id is not None
            batch = batches.get_batch(session, tenant_id=delivery.tenant_id, batch_id=delivery.batch_id)
            tally = batches.counts(session, batch_ids=[delivery.batch_id])[delivery.batch_id]
            payload = {
                "event": "batch.finished",
                "batch": BatchView.of(batch, tally).model_dump(mode="json") if batch else None,
            }
        return json.dumps({"delivery_id": str(delivery.id), **payload}, ensure_ascii=False).encode()

    async def deliver(self, delivery: webhooks.Due) -> None:
        try:
            with self.sessions() as session:
                body = self.body(session, delivery)
                secret = session.execute(
                    select(Tenant.webhook_secret).where(Tenant.id == delivery.tenant_id)
                ).scalar_one()
        except DBAPIError:
            raise  # the database is away: the round fails, and the claim's lease brings the delivery back
        except Exception as exc:  # the job or batch cannot be shown: retrying cannot help
            log.exception("webhook %s: its body cannot be built; marked failed", delivery.id)
            self.record(delivery, code=None, error=f"the body cannot be built: {type(exc).__name__}", final=True)
            return
        code, error = None, None
        try:
            answer = await afetch(
                delivery.url,
                method="POST",
                body=body,
                headers={
                    "Content-Type": "application/json",
                    "Mlq-Signature": sign(secret, body, timestamp=int(time.time())),
                    "Mlq-Delivery": str(delivery.id),
                },
                max_bytes=MAX_RESPONSE_BYTES,
                timeout_s=self.settings.webhook_timeout_s,
                max_redirects=0,
                allow_hosts=self.settings.allow_hosts,
            )
            code = answer.status
        except MlqError as exc:
            error = f"{exc.code}: {exc}"[:500]
        self.record(delivery, code=code, error=error, final=delivery.attempt >= self.settings.webhook_max_attempts)

    def record(self, delivery: webhooks.Due, *, code: int | None, error: str | None, final: bool) -> None:
        """One attempt's outcome: delivered, retried with backoff, or (``final``) failed for good."""
        delivered = code is not None and 200 <= code < 300
        retry_in_s = None
        if not delivered and not final:
            retry_in_s = backoff_s(delivery.attempt - 1, base_s=self.settings.webhook_retry_base_s, max_s=3600.0)
        with self.sessions.begin() as session:
            webhooks.record(
                session,
                delivery_id=delivery.id,
                delivered=delivered,
                status_code=code,
                error=error or (None if delivered else f"HTTP {code}"),
                retry_in_s=retry_in_s,
            )
        outcome = "delivered" if delivered else "retrying" if retry_in_s is not None else "failed"
        metrics.WEBHOOK_DELIVERIES.labels(outcome).inc()
        log.info(
            "webhook %s to %s attempt %d: %s",
            delivery.id,
            delivery.url,
            delivery.attempt,
            "delivered" if delivered else error or f"HTTP {code}",
        )
