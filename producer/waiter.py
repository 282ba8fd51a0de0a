"""Long-poll support: wake waiting requests when PostgreSQL says their job finished.

Workers ``NOTIFY`` on commit of a final state; one ``LISTEN`` connection per
API process fans that out to the requests waiting on those ids. If the
listener is down, waiters fall back to re-reading the row every second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import defaultdict

import psycopg
from psycopg import sql

from jobs.db import NOTIFY_CHANNEL, libpq_url

log = logging.getLogger("mlq.waiter")

RECONNECT_S = 1.0
FALLBACK_POLL_S = 1.0  # how often a waiter re-reads its row while the listener is down


class Waiter:
    def __init__(self, database_url: str) -> None:
        self.url = libpq_url(database_url)
        self.waiting: dict[uuid.UUID, set[asyncio.Event]] = defaultdict(set)
        self.connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="mlq-waiter")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @contextlib.contextmanager
    def subscribe(self, job_id: uuid.UUID):  # type: ignore[no-untyped-def]
        event = asyncio.Event()
        self.waiting[job_id].add(event)
        try:
            yield event
        finally:
            events = self.waiting.get(job_id)
            if events is not None:
                events.discard(event)
                if not events:
                    del self.waiting[job_id]

    def poll_interval_s(self, remaining_s: float) -> float:
        return remaining_s if self.connected.is_set() else min(remaining_s, FALLBACK_POLL_S)

    async def _listen(self) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(NOTIFY_CHANNEL)))
                    self.connected.set()
                    self._wake_all()  # anything that finished while we were away
                    async for note in conn.notifies():
                        self._wake(note.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("job listener lost its connection (%s); reconnecting", exc)
            self.connected.clear()
            await asyncio.sleep(RECONNECT_S)

    def _wake(self, payload: str) -> None:
        for raw in payload.split(","):
            try:
                job_id = uuid.UUID(raw)
            except ValueError:
                continue
            for event in self.waiting.get(job_id, ()):
                event.set()

    def _wake_all(self) -> None:
        for events in self.waiting.values():
            for event in events:
                event.set()
