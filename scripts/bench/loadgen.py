"""A small closed-loop HTTP/1.1 load generator on raw asyncio streams.

httpx costs more CPU per request than the servers we measure, which would make the
client the bottleneck on a 2-core machine; this speaks just enough HTTP/1.1 (keep-alive,
Content-Length bodies) to drive one endpoint with N concurrent connections.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Result:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


def _until(deadline: float) -> Iterator[float]:
    """Closed loop: each request is due the moment the previous answer arrived."""
    while (now := time.perf_counter()) < deadline:
        yield now


async def _worker(
    host: str,
    port: int,
    request: bytes,
    due_times: Iterator[float],
    latencies: list[float],
    errors: list[int],
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for due in due_times:
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            writer.write(request)
            status = await _read_response(reader)
            # From the moment the request was due, so a stall is not hidden by waiting for it.
            latencies.append(time.perf_counter() - due)
            if status >= 300:
                errors.append(status)
    finally:
        writer.close()
        await writer.wait_closed()


def _request(host: str, port: int, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: keep-alive"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _result(latencies: list[float], seconds: float, errors: int) -> Result:
    ordered = sorted(latencies)
    return Result(
        requests=len(ordered),
        seconds=seconds,
        p50_ms=statistics.median(ordered) * 1000,
        p99_ms=ordered[max(0, int(len(ordered) * 0.99) - 1)] * 1000,
        errors=errors,
    )


async def run_rate(
    host: str,
    port: int,
    path: str,
    *,
    headers: dict[str, str],
    rate: float,
    seconds: float,
    connections: int = 16,
) -> Result:
    """Open loop: ``rate`` requests a second, spread over ``connections``, for ``seconds``."""
    request = _request(host, port, path, headers)
    start = time.perf_counter() + 0.05
    total = int(rate * seconds)
    schedules = [
        [start + i / rate for i in range(c, total, connections)] for c in range(connections)
    ]
    latencies: list[float] = []
    errors: list[int] = []
    await asyncio.gather(
        *(_worker(host, port, request, iter(s), latencies, errors) for s in schedules)
    )
    return _result(latencies, time.perf_counter() - start, len(errors))


async def run(
    host: str, port: int, path: str, *, headers: dict[str, str], concurrency: int, seconds: float
) -> Result:
    """Closed loop: ``concurrency`` connections, each sending as soon as it has an answer."""
    request = _request(host, port, path, headers)
    latencies: list[float] = []
    errors: list[int] = []
    start = time.perf_counter()
    await asyncio.gather(
        *(
            _worker(host, port, request, _until(start + seconds), latencies, errors)
            for _ in range(concurrency)
        )
    )
    return _result(latencies, time.perf_counter() - start, len(errors))
