"""Actions service: event-to-SendData latency at 1, 100 and 1,000 rooms, and throughput.

Real processes on loopback: nats-server with JetStream and one actions replica
(``python -m avatar_actions``), sending to the LiveKit server double, which runs in this
process so one clock times both ends. Every room gets 10 events a second, as pairs of
``speech_created`` + ``playout_started`` every 0.2 s; the second releases a ``speaking``
packet at once (no debounce), and its latency runs from the start of its publish to
the double accepting the ``SendData``. Throughput: a backlog published as fast as this
process can, drained by the one replica.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import nats.js.errors

from avatar_shared import subjects
from avatar_shared.bus import Bus, events_stream
from avatar_shared.config import NatsSettings
from avatar_shared.events import PlayoutStarted, SpeechCreated
from scripts.bench.report import write_section
from tests.support.livekit_server import LiveKitDouble, running_livekit
from tests.support.nats_server import free_port, start_nats_process

ROOT = Path(__file__).resolve().parents[2]
KEY, SECRET = "APIbench", "bench-actions-secret-that-is-long-enough-0123"


async def _speech(bus: Bus, room: str, n: int, published: dict[str, list[float]]) -> None:
    speech = f"s{n}"
    await bus.publish(
        SpeechCreated(
            room=room, speech_id=speech, seq=2 * n, source_kind="say", user_initiated=False
        )
    )
    published[room].append(time.perf_counter())
    await bus.publish(PlayoutStarted(room=room, speech_id=speech, seq=2 * n + 1))


async def _wait_for(double: LiveKitDouble, count: int, limit: float) -> bool:
    deadline = time.perf_counter() + limit
    while len(double.received) < count and time.perf_counter() < deadline:
        await asyncio.sleep(0.02)
    return len(double.received) >= count


def _latencies(double: LiveKitDouble, published: dict[str, list[float]]) -> list[float]:
    arrived: dict[str, list[float]] = defaultdict(list)
    for got in double.received:
        arrived[got.request.room].append(got.at)
    return [
        a - p
        for room, times in published.items()
        for p, a in zip(times, arrived[room], strict=False)
    ]


async def _paced(bus: Bus, double: LiveKitDouble, rooms: int, seconds: float, tag: str) -> str:
    double.received.clear()
    published: dict[str, list[float]] = defaultdict(list)
    names = [f"{tag}-{r}" for r in range(rooms)]
    start = time.perf_counter()
    ticks = int(seconds / 0.2)
    for n in range(ticks):
        await asyncio.sleep(max(0.0, start + n * 0.2 - time.perf_counter()))
        await asyncio.gather(*(_speech(bus, room, n, published) for room in names))
    offered = rooms * ticks * 2 / (time.perf_counter() - start)
    complete = await _wait_for(double, rooms * ticks, 120)
    lat = sorted(_latencies(double, published))
    p50 = statistics.median(lat) * 1000
    p99 = lat[max(0, int(len(lat) * 0.99) - 1)] * 1000
    missing = "" if complete else f" ({rooms * ticks - len(double.received)} packets missing)"
    return f"| {rooms} | {offered:.0f} | {len(lat)} | {p50:.2f} | {p99:.2f} |{missing}"


async def _backlog(bus: Bus, double: LiveKitDouble, rooms: int, speeches: int) -> tuple[int, float]:
    double.received.clear()
    published: dict[str, list[float]] = defaultdict(list)
    start = time.perf_counter()
    for n in range(speeches):
        await asyncio.gather(*(_speech(bus, f"burst-{r}", n, published) for r in range(rooms)))
    await _wait_for(double, rooms * speeches, 300)
    return 2 * rooms * speeches, time.perf_counter() - start


async def _consumer_ready(bus: Bus, name: str) -> None:
    async with asyncio.timeout(30):
        while True:
            try:
                await bus.js.consumer_info(subjects.EVENTS_STREAM, name)
                return
            except nats.js.errors.NotFoundError:
                await asyncio.sleep(0.05)


async def measure(args: argparse.Namespace, nats_url: str) -> str:
    port = free_port()
    bus = await Bus.connect(NatsSettings(url=nats_url), name="bench")
    await bus.ensure_stream(events_stream())
    async with running_livekit(LiveKitDouble(keys={KEY: SECRET})) as double:
        env = os.environ | {
            "NATS_URL": nats_url,
            "LIVEKIT_URL": double.url,
            "LIVEKIT_API_KEY": KEY,
            "LIVEKIT_API_SECRET": SECRET,
            "ACTIONS_PORT": str(port),
            "ACTIONS_HOST": "127.0.0.1",
            "LOG_LEVEL": "WARNING",
        }
        actions = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "avatar_actions", env=env, cwd=ROOT
        )
        try:
            await _consumer_ready(bus, "actions")
            rows = [await _paced(bus, double, n, args.seconds, f"r{n}") for n in (1, 100, 1000)]
            events, elapsed = await _backlog(bus, double, 200, 10)
        finally:
            actions.terminate()
            await actions.wait()
    await bus.close()
    return "\n".join(
        [
            "One actions replica, state and sent record in JetStream KV, decisions published",
            "back to the bus; the load generator and the LiveKit double share the machine.",
            "",
            "| Rooms | Offered events/s | Packets | p50 (ms) | p99 (ms) |",
            "| --- | --- | --- | --- | --- |",
            *rows,
            "",
            f"Backlog: {events} events (200 rooms) processed in {elapsed:.1f} s "
            f"= {events / elapsed:.0f} events/s (publishing included).",
            "",
            "Targets (issue 4): p50 <= 2 ms and p99 <= 10 ms at 100 rooms; >= 3,000 events/s"
            " per replica.",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    nats_server = start_nats_process()
    try:
        body = asyncio.run(measure(args, nats_server.url))
    finally:
        nats_server.stop()
    write_section("actions", "make bench-actions", body)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
