"""Actions service: event-to-SendData latency at 1, 100 and 1,000 rooms, and throughput.

Real processes on loopback: nats-server with JetStream and one actions replica
(``python -m avatar_actions``), sending to the LiveKit server double, which runs in this
process so one clock times both ends. Every room gets 10 events a second, as pairs of
``speech_created`` + ``playout_started`` every 0.2 s, rooms spread evenly over that
cycle; the second releases a ``speaking`` packet at once (no debounce), and its latency
runs from the start of its publish to the ``SendData`` reaching the double.
Throughput: a backlog published while the replica is stopped, then drained by a fresh
replica; events/s counts from its first packet to its last.
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

from avatar_actions.partitions import WORK_STREAM, consumer_name
from avatar_shared.bus import Bus, events_stream
from avatar_shared.config import NatsSettings
from avatar_shared.events import PlayoutStarted, SpeechCreated
from scripts.bench.report import write_section
from tests.support.livekit_server import LiveKitDouble, running_livekit
from tests.support.nats_server import free_port, start_nats_process

ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = int(os.environ.get("ACTIONS_PARTITIONS", "16"))
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
    start = time.perf_counter()
    ticks = int(seconds / 0.2)

    async def room_loop(r: int) -> None:
        # Rooms are independent conversations: each has its own phase in the 0.2 s cycle.
        phase = start + 0.2 * r / rooms
        for n in range(ticks):
            await asyncio.sleep(max(0.0, phase + n * 0.2 - time.perf_counter()))
            await _speech(bus, f"{tag}-{r}", n, published)

    await asyncio.gather(*(room_loop(r) for r in range(rooms)))
    offered = rooms * ticks * 2 / (time.perf_counter() - start)
    complete = await _wait_for(double, rooms * ticks, 120)
    lat = sorted(_latencies(double, published))
    p50 = statistics.median(lat) * 1000
    p99 = lat[max(0, int(len(lat) * 0.99) - 1)] * 1000
    missing = "" if complete else f" ({rooms * ticks - len(double.received)} packets missing)"
    return f"| {rooms} | {offered:.0f} | {len(lat)} | {p50:.2f} | {p99:.2f} |{missing}"


async def _publish_backlog(bus: Bus, rooms: int, speeches: int) -> int:
    published: dict[str, list[float]] = defaultdict(list)
    for n in range(speeches):
        await asyncio.gather(*(_speech(bus, f"burst-{r}", n, published) for r in range(rooms)))
    return 2 * rooms * speeches


async def _drained(double: LiveKitDouble, packets: int) -> float:
    await _wait_for(double, packets, 300)
    times = sorted(got.at for got in double.received)
    return times[-1] - times[0]


async def _sourced(bus: Bus, events: int) -> None:
    """Wait until the work stream holds the whole backlog (sourcing is asynchronous)."""
    async with asyncio.timeout(120):
        while await bus.stored_messages(WORK_STREAM) < events:
            await asyncio.sleep(0.1)


async def _ready(bus: Bus, partitions: int) -> None:
    """Every partition has its consumer (the replica owns them all)."""
    async with asyncio.timeout(60):
        for partition in range(partitions):
            while not await bus.consumer_exists(WORK_STREAM, consumer_name("actions", partition)):
                await asyncio.sleep(0.05)


async def _replica(env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "avatar_actions", env=env, cwd=ROOT
    )


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
        actions = await _replica(env)
        try:
            await _ready(bus, PARTITIONS)
            rows = [await _paced(bus, double, n, args.seconds, f"r{n}") for n in (1, 100, 1000)]
        finally:
            actions.terminate()
            await actions.wait()
        double.received.clear()
        events = await _publish_backlog(bus, 500, 10)
        await _sourced(bus, events)
        actions = await _replica(env)
        try:
            elapsed = await _drained(double, events // 2)
        finally:
            actions.terminate()
            await actions.wait()
    await bus.close()
    return "\n".join(
        [
            f"One actions replica owning all {PARTITIONS} partitions (rooms in memory, state and",
            "sent record in JetStream KV, decisions published back to the bus); nats-server,",
            "the load generator and the LiveKit double share the machine's 2 cores. The",
            "replica's OpenTelemetry SDK is on (spans and metrics recorded, spans not exported).",
            "",
            "| Rooms | Offered events/s | Packets | p50 (ms) | p99 (ms) |",
            "| --- | --- | --- | --- | --- |",
            *rows,
            "",
            f"Backlog: {events} events (500 rooms) waiting in the work stream, drained by a "
            f"fresh replica in {elapsed:.2f} s (first packet to last) = "
            f"{events / elapsed:.0f} events/s.",
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
