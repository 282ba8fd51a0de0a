"""A TCP relay that delays and loses, for a kernel without ``sch_netem``.

It listens on a link's outside address and forwards to a service on 127.0.0.1. Like netem on
the host's interface, it delays and drops what the host sends (its egress): each chunk read
from the host is written to the service ``delay_s`` later, in order; answers pass at once. Loss is what TCP makes of
it: a lost segment is sent again after a retransmission timeout, and what follows waits behind
it; so one chunk in 1/``loss`` is held for one more timeout (the larger of Linux's
200 ms floor and twice the delay), and the chunks after it queue behind it. The bytes arrive
intact, as they do over a lossy link under TCP; what the applications see is the delay, and the
stalls. ``cut`` closes every connection and refuses new ones (a link that drops everything
looks like that to TCP's peers after its retransmissions give up).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass

MIN_RTO_S = 0.2  # Linux's TCP_RTO_MIN


@dataclass
class RelayCounts:
    connections: int = 0
    chunks: int = 0
    lost: int = 0  # chunks held back one retransmission timeout
    delayed_s: float = 0.0  # the added delay, summed over chunks


class Relay:
    """``listen`` (host, port; 0: any free one) → ``target`` (host, port), in a thread of its own.
    ``delay_s`` and ``loss`` may be changed while it runs; 0 and 0 relay at once."""

    def __init__(
        self, *, listen: tuple[str, int], target: tuple[str, int], delay_s: float = 0, loss: float = 0
    ) -> None:
        self.listen, self.target = listen, target
        self.delay_s, self.loss = delay_s, loss
        self._owed = 0.5  # loss owed, in chunks: the first is lost halfway through 1/loss chunks, then one each 1/loss
        self.counts = RelayCounts()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._thread = threading.Thread(target=self._run, name=f"relay-{listen[0]}:{listen[1]}", daemon=True)

    def start(self) -> Relay:
        self._thread.start()
        if not self._ready.wait(10) or self._server is None:
            raise RuntimeError(f"relay on {self.listen} did not start")
        return self

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def stop(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._accept, *self.listen))
        self._ready.set()
        self._loop.run_forever()
        self._loop.close()

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.counts.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            self._tasks.discard(task)
            return
        try:
            await asyncio.gather(
                self._pipe(reader, up_writer, egress=True), self._pipe(up_reader, writer, egress=False)
            )
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for one in (writer, up_writer):
                with contextlib.suppress(Exception):
                    one.close()
            self._tasks.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, egress: bool) -> None:
        """One direction: read at once, deliver each chunk at its due time, in order. ``egress``
        (what the host sends) is delayed and lost as ``delay_s`` and ``loss`` are set at the time."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    writer.write_eof() if writer.can_write_eof() else writer.close()
                    return
                wait_s = due - time.monotonic()
                if wait_s > 0:
                    await asyncio.sleep(wait_s)
                writer.write(data)
                await writer.drain()

        delivering = asyncio.ensure_future(deliver())
        last_due = 0.0
        try:
            while True:
                data = await reader.read(65536)
                delay_s, loss = (self.delay_s, self.loss) if egress else (0.0, 0.0)
                due = time.monotonic() + delay_s
                if data and delay_s:
                    self.counts.chunks += 1
                    self._owed += loss
                    if self._owed >= 0.999:  # evenly spread, not random: a short scenario always loses some
                        self._owed -= 1
                        self.counts.lost += 1
                        due += max(MIN_RTO_S, 2 * delay_s)  # one retransmission timeout
                due = max(due, last_due)  # in order: nothing overtakes a held chunk
                if delay_s:
                    self.counts.delayed_s += due - time.monotonic()
                last_due = due
                await queue.put((due, data))
                if not data:
                    break
            await delivering
        finally:
            delivering.cancel()
