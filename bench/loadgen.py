"""A lean HTTP/1.1 load generator for the benchmarks: keep-alive connections on asyncio
streams, a request written as bytes and the answer read by Content-Length.

The producers of a real deployment run on other machines; here they share the two cores
with everything measured, so the submitting side should cost as little as it can. httpx
spends about 1.4 ms of CPU per request (measured in the throughput benchmark: 2.8 core-s
for 2,000 POSTs), which on this machine is CPU the API and the model do not get. This
client spends a fraction of that; ``Load.cpu_s`` reports what it used.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import resource
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


class HttpError(RuntimeError):
    pass


@dataclass
class Load:
    answers: list[dict[str, Any]]  # JSON bodies, in the order of the requests
    cpu_s: float  # this process's CPU while sending (user + system)


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _post_all(
    url: str, path: str, bodies: list[bytes], *, headers: dict[str, str], connections: int
) -> list[Any]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": f"{host}:{port}", **headers}.items())
    answers: list[Any] = [None] * len(bodies)
    pending = iter(range(len(bodies)))

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for i in pending:
                body = bodies[i]
                writer.write(
                    f"POST {path} HTTP/1.1\r\n{head}Content-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                status_line = await reader.readline()
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                payload = await reader.readexactly(length)
                code = int(status_line.split()[1])
                if not 200 <= code < 300:
                    raise HttpError(f"POST {path} answered {code}: {payload[:300]!r}")
                answers[i] = json.loads(payload)
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(connections)))
    return answers


def post_json(url: str, path: str, bodies: Iterable[Any], *, key: str, connections: int = 8) -> Load:
    """POST each body as JSON over ``connections`` keep-alive connections; raise on any non-2xx."""
    encoded = [json.dumps(b, ensure_ascii=False).encode() for b in bodies]
    started = _cpu_s()
    answers = asyncio.run(
        _post_all(url, path, encoded, headers={"Authorization": f"Bearer {key}"}, connections=connections)
    )
    return Load(answers=answers, cpu_s=_cpu_s() - started)


class Client:
    """One keep-alive connection, one request at a time (the latency benchmark's client):
    the standard library's http.client, about a tenth of httpx's CPU per request."""

    def __init__(self, url: str, *, key: str, timeout_s: float = 60) -> None:
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout_s)
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    def request(self, method: str, path: str, body: Any = None) -> Any:
        payload = None if body is None else json.dumps(body, ensure_ascii=False).encode()
        self.conn.request(method, path, body=payload, headers=self.headers)
        answer = self.conn.getresponse()
        data = answer.read()
        if not 200 <= answer.status < 300:
            raise HttpError(f"{method} {path} answered {answer.status}: {data[:300]!r}")
        return json.loads(data)

    def close(self) -> None:
        self.conn.close()
