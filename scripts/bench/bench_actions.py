"""Actions service against the bare relay, in the same run, on the same machine.

Real processes on loopback: nats-server with JetStream, the server under test (one
actions replica, ``python -m avatar_actions``, or the bare relay,
``python -m scripts.bench.relay``), and this process, which publishes the agent's events
and runs the LiveKit double, so one clock times both ends. The two servers take turns,
two rounds each, under the same load profiles:

- **paced**: every room starts a speech (``speech_created`` + ``playout_started``) every
  ``period`` seconds, rooms spread evenly over the period; the ``speaking`` packet's
  latency runs from the start of ``playout_started``'s publish to the double receiving
  the ``SendData``. 1 and 100 rooms at 10 events/s each; 1,000 and 5,000 rooms at one
  speech every 5 s (realistic conversations). Each room's first speech is a warm-up and
  not measured: a profile's rooms all begin within one period (100 new rooms in 200 ms),
  and what is measured is the steady state, not that burst of new sessions.
- **drain**: a backlog of ``playout_started`` for 500 rooms waiting in the stream while
  the server is stopped, then drained by a fresh one: packets/s from its first packet to
  its last. (The actions replica runs with a large ``ACTIONS_MAX_LAG_SECONDS`` here, so
  the old backlog is sent, not shed.)

Then the actions service alone:

- **overload**: twice its drain rate offered for 10 s, then nothing: the packets sent
  must stay within ``ACTIONS_MAX_LAG_SECONDS`` (p99), every packet not sent must be a
  ``stale`` decision on the bus, and the work stream must drain once the load falls.
- **soak** (``--soak-seconds``): 1,000 rooms, a speech every 5 s each, sessions ending
  and new ones starting; the replica's resident memory sampled over time must stay
  below its bound (docs/actions.md, "Memory"); exits non-zero if it does not.

Targets (issue #15), as ratios to the relay in the same run: at 100 rooms p50 <= 1.5x and
p99 <= 3x; at 1,000 and 5,000 rooms p99 <= 3x; drain >= 0.6x.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import random
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import httpx
import nats
import nats.js.errors
from nats.js import api as js_api

from avatar_actions.config import ActionsSettings, memory_bound_mib
from avatar_actions.partitions import WORK_STREAM, consumer_name
from avatar_actions.ports import packet_nonce
from avatar_shared import subjects
from avatar_shared.bus import Bus, events_stream
from avatar_shared.config import NatsSettings
from avatar_shared.events import PlayoutStarted, SessionEnded, SpeechCreated
from scripts.bench.relay import CONSUMER as RELAY_CONSUMER
from scripts.bench.report import write_section
from tests.support.nats_server import NatsServer, free_port, start_nats_process

ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 16
KEY, SECRET = "APIbench", "bench-actions-secret-that-is-long-enough-0123"
MAX_LAG = 2.0
#: Each room's first speech in a paced profile is a warm-up, not measured: every room of a
#: profile starts within one period, far faster than sessions start.
WARMUP_SPEECHES = 1
#: The replica's memory bound under its default settings (docs/actions.md, "Memory").
MEMORY_BOUND_MIB = memory_bound_mib(ActionsSettings.model_fields["max_rooms"].default)


@dataclass(frozen=True)
class Profile:
    label: str
    rooms: int
    period: float  # seconds between speeches of one room
    seconds: float


PROFILES = (
    Profile("1 room, 10 events/s", 1, 0.2, 5),
    Profile("100 rooms, 10 events/s each", 100, 0.2, 5),
    Profile("1,000 rooms, a speech every 5 s", 1000, 5.0, 10),
    Profile("5,000 rooms, a speech every 5 s", 5000, 5.0, 10),
)


@dataclass(frozen=True)
class Paced:
    offered: float  # events/s
    packets: int
    expected: int
    p50_ms: float
    p99_ms: float


@dataclass(frozen=True)
class Got:
    room: str
    nonce: bytes
    action: str
    at: float  # the double's time.perf_counter() when the SendData reached it


class RemoteDouble:
    """The LiveKit double running in a process of its own (``tests.support.livekit_server``),
    so that its arrival times are not delayed by this process's publishing."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._http = httpx.AsyncClient(base_url=self.url, timeout=30)

    async def ready(self) -> None:
        async with asyncio.timeout(30):
            while True:
                with contextlib.suppress(httpx.TransportError):
                    await self.count()
                    return
                await asyncio.sleep(0.05)

    async def count(self) -> int:
        return int((await self._http.get("/_double/count")).json())

    async def received(self) -> list[Got]:
        rows = (await self._http.get("/_double/received")).json()
        return [
            Got(room, bytes.fromhex(nonce), json.loads(data)["action"], at)
            for room, nonce, data, at in rows
        ]

    async def clear(self) -> None:
        await self._http.post("/_double/clear")

    async def close(self) -> None:
        await self._http.aclose()


class Publisher:
    """The agent's side: publishes speeches and remembers when each playout left."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.published: dict[str, list[float]] = defaultdict(list)
        #: The speaking packet's nonce (as the actions service derives it) -> publish time.
        self.by_nonce: dict[bytes, float] = {}
        #: Publish times of the warm-up speeches, whose packets are not measured.
        self.unmeasured: set[float] = set()

    async def speech(
        self, room: str, n: int, *, created: bool = True, measured: bool = True
    ) -> None:
        speech = f"s{n}"
        if created:
            await self.bus.publish(
                SpeechCreated(
                    room=room, speech_id=speech, seq=2 * n, source_kind="say", user_initiated=False
                )
            )
        playout = PlayoutStarted(room=room, speech_id=speech, seq=2 * n + 1)
        now = time.perf_counter()
        self.published[room].append(now)
        self.by_nonce[packet_nonce(room, playout.id, "speaking")] = now
        if not measured:
            self.unmeasured.add(now)
        await self.bus.publish(playout)


def latencies(received: list[Got], agent: Publisher) -> list[float]:
    """Each packet's latency. The actions service's packets are matched to their playout
    by nonce (it may shed some); the relay's, which never sheds, by order within a room."""
    found: list[float] = []
    arrived: dict[str, list[float]] = defaultdict(list)
    for got in received:
        sent = agent.by_nonce.get(got.nonce)
        if sent is None:
            arrived[got.room].append(got.at)
        elif sent not in agent.unmeasured:
            found.append(got.at - sent)
    found += [
        a - p
        for room, times in arrived.items()
        for p, a in zip(agent.published[room], times, strict=False)
        if p not in agent.unmeasured
    ]
    return sorted(found)


def _created(value: object) -> datetime.datetime:
    """A consumer's creation time (nats-py gives the server's RFC 3339 string)."""
    if isinstance(value, datetime.datetime):
        return value
    text = str(value).replace("Z", "+00:00")
    whole, _, rest = text.partition(".")
    fraction, _, zone = rest.partition("+")
    return datetime.datetime.fromisoformat(f"{whole}.{fraction[:6]}+{zone or '00:00'}")


def percentile(values: list[float], share: float) -> float:
    return values[max(0, int(len(values) * share) - 1)] if values else float("nan")


async def wait_for(double: RemoteDouble, count: int, limit: float) -> int:
    """How many packets arrived, once ``count`` did or ``limit`` seconds passed."""
    deadline = time.perf_counter() + limit
    while (arrived := await double.count()) < count and time.perf_counter() < deadline:
        await asyncio.sleep(0.05)
    return arrived


async def paced(bus: Bus, double: RemoteDouble, profile: Profile, tag: str) -> Paced:
    await double.clear()
    agent = Publisher(bus)
    start = time.perf_counter()
    ticks = WARMUP_SPEECHES + max(1, round(profile.seconds / profile.period))

    async def room_loop(r: int) -> None:
        phase = start + profile.period * r / profile.rooms
        for n in range(ticks):
            await asyncio.sleep(max(0.0, phase + n * profile.period - time.perf_counter()))
            await agent.speech(f"{tag}-{r}", n, measured=n >= WARMUP_SPEECHES)

    await asyncio.gather(*(room_loop(r) for r in range(profile.rooms)))
    offered = profile.rooms * ticks * 2 / (time.perf_counter() - start)
    expected = profile.rooms * ticks
    arrived = await wait_for(double, expected, 30)
    lat = latencies(await double.received(), agent)
    return Paced(
        offered,
        arrived,
        expected,
        statistics.median(lat) * 1000 if lat else float("nan"),
        percentile(lat, 0.99) * 1000,
    )


async def backlog(bus: Bus, rooms: int, speeches: int, tag: str) -> int:
    agent = Publisher(bus)
    for n in range(speeches):
        await asyncio.gather(*(agent.speech(f"{tag}-{r}", n, created=False) for r in range(rooms)))
    return rooms * speeches


async def drained(double: RemoteDouble, packets: int) -> float:
    await wait_for(double, packets, 300)
    times = sorted(got.at for got in await double.received())
    return len(times) / (times[-1] - times[0])


class Server:
    """One server under test, as a process."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        self.name = name
        self._argv = argv
        self._env = env
        self.proc: asyncio.subprocess.Process | None = None

    async def start(
        self, bus: Bus, extra: dict[str, str] | None = None, *, fresh: bool = True
    ) -> None:
        """``fresh``: what the other server's turn left in this one's stream or consumer
        is cleared first; otherwise (draining a backlog) it is kept."""
        if fresh and self.name == "relay":
            await bus.delete_consumer(subjects.EVENTS_STREAM, RELAY_CONSUMER)
        elif fresh:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await bus.purge_stream(WORK_STREAM)
        started = datetime.datetime.now(datetime.UTC)
        self.proc = await asyncio.create_subprocess_exec(
            *self._argv, env=self._env | (extra or {}), cwd=ROOT
        )
        # The relay keeps its durable consumer across restarts (draining a backlog);
        # an actions replica recreates every partition's consumer when it takes it.
        await self._ready(started if fresh or self.name == "actions" else None)

    async def _ready(self, since: datetime.datetime | None) -> None:
        """Its consumers exist, created by this process (``since`` it started)."""
        names = (
            [(subjects.EVENTS_STREAM, RELAY_CONSUMER)]
            if self.name == "relay"
            else [(WORK_STREAM, consumer_name("actions", p)) for p in range(PARTITIONS)]
        )
        nc = await nats.connect(
            self._env["NATS_URL"], nkeys_seed=self._env["BENCH_ADMIN_SEED_FILE"]
        )
        js = nc.jetstream()
        try:
            async with asyncio.timeout(60):
                for stream, name in names:
                    while True:
                        with contextlib.suppress(nats.js.errors.NotFoundError):
                            info = await js.consumer_info(stream, name)
                            if since is None or _created(info.created) >= since:
                                break
                        await asyncio.sleep(0.05)
        finally:
            await nc.close()

    async def stop(self) -> None:
        assert self.proc is not None
        self.proc.terminate()
        await self.proc.wait()

    def rss_mib(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")


async def comparison(
    bus: Bus, double: RemoteDouble, servers: list[Server], rounds: int
) -> tuple[dict[tuple[str, str], list[Paced]], dict[str, list[float]]]:
    results: dict[tuple[str, str], list[Paced]] = defaultdict(list)
    drains: dict[str, list[float]] = defaultdict(list)
    for round_ in range(1, rounds + 1):
        for server in servers:
            await server.start(bus)
            for profile in PROFILES:
                result = await paced(bus, double, profile, f"{server.name}{round_}-{profile.rooms}")
                results[(server.name, profile.label)].append(result)
                print(
                    f"round {round_} {server.name} {profile.label}: p50 {result.p50_ms:.2f} ms, "
                    f"p99 {result.p99_ms:.2f} ms, {result.packets}/{result.expected} packets",
                    flush=True,
                )
            await server.stop()
            await double.clear()
            packets = await backlog(bus, 500, 10, f"burst-{server.name}{round_}")
            if server.name == "actions":  # sourcing into the work stream is asynchronous
                while await bus.stored_messages(WORK_STREAM) < packets:
                    await asyncio.sleep(0.1)
            await server.start(bus, {"ACTIONS_MAX_LAG_SECONDS": "3600"}, fresh=False)
            rate = await drained(double, packets)
            drains[server.name].append(rate)
            print(f"round {round_} {server.name} drain: {rate:.0f} packets/s", flush=True)
            await server.stop()
    return results, drains


async def decisions_by_reason(admin: NatsSettings, room_prefix: str) -> dict[str, int]:
    """Count the actions service's decisions on the bus, for rooms of one run."""
    nc = await nats.connect(admin.url, nkeys_seed=admin.nkey_seed_file)
    js = nc.jetstream()
    sub = await js.pull_subscribe(
        f"{subjects.PREFIX}.{subjects.ACTIONS}.action_decision.>",
        stream=subjects.EVENTS_STREAM,
        config=js_api.ConsumerConfig(deliver_policy=js_api.DeliverPolicy.ALL),
    )
    counts: dict[str, int] = defaultdict(int)
    while True:
        try:
            msgs = await sub.fetch(1000, timeout=1)
        except TimeoutError:
            break
        for msg in msgs:
            body = json.loads(msg.data)
            if body["room"].startswith(room_prefix):
                counts[body["reason"] or body["outcome"]] += 1
            await msg.ack()
    await nc.close()
    return dict(counts)


async def overload(
    bus: Bus, double: RemoteDouble, actions: Server, capacity: float, admin: NatsSettings
) -> list[str]:
    """Twice the replica's capacity for 10 s; what was sent, shed and left behind."""
    await actions.start(bus)
    await double.clear()
    agent = Publisher(bus)
    rate = 2 * capacity
    rooms = 2000
    seconds = 10.0
    start = time.perf_counter()
    published = 0

    async def room_loop(r: int) -> None:
        nonlocal published
        period = rooms / rate
        phase = start + period * r / rooms
        for n in range(int(seconds / period)):
            await asyncio.sleep(max(0.0, phase + n * period - time.perf_counter()))
            await agent.speech(f"over-{r}", n, created=False)
            published += 1

    await asyncio.gather(*(room_loop(r) for r in range(rooms)))
    offered = published / (time.perf_counter() - start)
    load_ended = time.perf_counter()
    drained_after = float("nan")
    async with asyncio.timeout(120):
        while await bus.stored_messages(WORK_STREAM) > 0:
            await asyncio.sleep(0.1)
        drained_after = time.perf_counter() - load_ended
    await asyncio.sleep(2)  # the last decisions reach the bus
    await actions.stop()
    received = await double.received()
    lat = latencies(received, agent)
    sent = len(received)
    reasons = await decisions_by_reason(admin, "over-")
    stale = reasons.get("stale", 0)
    accounted = "all accounted for" if sent + stale == published else "NOT all accounted for"
    return [
        f"Offered {offered:.0f} playouts/s (2x the drain rate of {capacity:.0f}) for "
        f"{seconds:.0f} s over {rooms} rooms: {published} playouts.",
        f"- sent: {sent}, p50 {statistics.median(lat) * 1000:.0f} ms, "
        f"p99 {percentile(lat, 0.99) * 1000:.0f} ms (bound {MAX_LAG * 1000:.0f} ms: "
        f"{'met' if percentile(lat, 0.99) <= MAX_LAG else 'NOT met'})",
        f"- shed as `stale`, each a decision on the bus: {stale}; sent + stale = "
        f"{sent + stale} of {published} ({accounted})",
        f"- the work stream was empty {drained_after:.1f} s after the load stopped",
    ]


async def soak(bus: Bus, actions: Server, seconds: float) -> tuple[list[str], bool]:
    """1,000 rooms, a speech every 5 s, sessions of 30-90 s ending and replaced."""
    await actions.start(bus)
    agent = Publisher(bus)
    stop_at = time.perf_counter() + seconds
    samples: list[tuple[float, float]] = [(0.0, actions.rss_mib())]
    started = time.perf_counter()
    rooms_seen = 0

    async def slot(s: int) -> None:
        nonlocal rooms_seen
        generation = 0
        await asyncio.sleep(5.0 * s / 1000)
        while time.perf_counter() < stop_at:
            room = f"soak-{s}-{generation}"
            rooms_seen += 1
            ends = time.perf_counter() + random.uniform(30, 90)  # noqa: S311 (load shape)
            n = 0
            while time.perf_counter() < min(ends, stop_at):
                await agent.speech(room, n)
                n += 1
                await asyncio.sleep(5.0)
            await bus.publish(SessionEnded(room=room, seq=2 * n, reason="user_left"))
            generation += 1

    async def sample() -> None:
        while time.perf_counter() < stop_at:
            await asyncio.sleep(10)
            samples.append((time.perf_counter() - started, actions.rss_mib()))

    await asyncio.gather(sample(), *(slot(s) for s in range(1000)))
    samples.append((time.perf_counter() - started, actions.rss_mib()))
    await actions.stop()
    peak = max(rss for _, rss in samples)
    within = peak <= MEMORY_BOUND_MIB
    points = ", ".join(f"{t:.0f} s: {rss:.0f}" for t, rss in samples[:: max(1, len(samples) // 10)])
    return [
        f"{seconds:.0f} s, 1,000 concurrent sessions of 30-90 s (a speech every 5 s each; "
        f"{rooms_seen} rooms in all).",
        f"- resident memory (MiB) over time: {points}",
        f"- peak {peak:.0f} MiB against the bound of {MEMORY_BOUND_MIB:.0f} MiB: "
        f"{'within' if within else 'EXCEEDED'}",
    ], within


def ratio_rows(
    results: dict[tuple[str, str], list[Paced]], drains: dict[str, list[float]]
) -> tuple[list[str], list[str]]:
    rows = [
        "| Profile | Server | Offered events/s | Packets | p50 (ms) | p99 (ms) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for profile in PROFILES:
        for server in ("relay", "actions"):
            for r in results[(server, profile.label)]:
                rows.append(
                    f"| {profile.label} | {server} | {r.offered:.0f} | "
                    f"{r.packets}/{r.expected} | {r.p50_ms:.2f} | {r.p99_ms:.2f} |"
                )
    targets = []

    def mean(server: str, label: str, field: str) -> float:
        return float(statistics.mean(getattr(r, field) for r in results[(server, label)]))

    def check(
        what: str, ours: float, base: float, limit: float, higher_is_better: bool = False
    ) -> None:
        ratio = ours / base
        met = ratio >= limit if higher_is_better else ratio <= limit
        sign = ">=" if higher_is_better else "<="
        targets.append(
            f"| {what} | {ours:.2f} | {base:.2f} | {ratio:.2f}x | {sign} {limit}x | "
            f"{'met' if met else 'NOT met'} |"
        )

    hundred = PROFILES[1].label
    check(
        "p50 at 100 rooms (ms)",
        mean("actions", hundred, "p50_ms"),
        mean("relay", hundred, "p50_ms"),
        1.5,
    )
    check(
        "p99 at 100 rooms (ms)",
        mean("actions", hundred, "p99_ms"),
        mean("relay", hundred, "p99_ms"),
        3.0,
    )
    for profile in PROFILES[2:]:
        check(
            f"p99 at {profile.rooms:,} rooms (ms)",
            mean("actions", profile.label, "p99_ms"),
            mean("relay", profile.label, "p99_ms"),
            3.0,
        )
    check(
        "backlog drain (packets/s)",
        statistics.mean(drains["actions"]),
        statistics.mean(drains["relay"]),
        0.6,
        higher_is_better=True,
    )
    return rows, [
        "| Target | Actions | Relay | Ratio | Target | |",
        "| --- | --- | --- | --- | --- | --- |",
        *targets,
    ]


async def measure(args: argparse.Namespace, nats_server: NatsServer) -> tuple[str, bool]:
    """Each server runs with its NATS identity (the relay, a bench tool, as the admin)."""
    nats_url, admin = nats_server.url, nats_server.admin
    bus = await Bus.connect(admin, name="bench")
    await bus.ensure_stream(events_stream())
    port = free_port()
    double_proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.support.livekit_server", str(port), KEY, SECRET, cwd=ROOT
    )
    double = RemoteDouble(port)
    try:
        await double.ready()
        env = os.environ | {
            "NATS_URL": nats_url,
            "LIVEKIT_URL": double.url,
            "LIVEKIT_API_KEY": KEY,
            "LIVEKIT_API_SECRET": SECRET,
            "ACTIONS_HOST": "127.0.0.1",
            "ACTIONS_PORT": str(free_port()),
            "ACTIONS_PARTITIONS": str(PARTITIONS),
            "ACTIONS_MAX_LAG_SECONDS": str(MAX_LAG),
            "LOG_LEVEL": "WARNING",
            "BENCH_ADMIN_SEED_FILE": str(admin.nkey_seed_file),
        }
        seed = {"NATS_NKEY_SEED_FILE": str(nats_server.settings("actions").nkey_seed_file)}
        actions = Server("actions", [sys.executable, "-m", "avatar_actions"], env | seed)
        admin_seed = {"NATS_NKEY_SEED_FILE": str(admin.nkey_seed_file)}
        relay = Server("relay", [sys.executable, "-m", "scripts.bench.relay"], env | admin_seed)
        results, drains = await comparison(bus, double, [relay, actions], args.rounds)
        rows, targets = ratio_rows(results, drains)
        over = await overload(bus, double, actions, statistics.mean(drains["actions"]), admin)
        soak_lines, within = (
            await soak(bus, actions, args.soak_seconds) if args.soak_seconds > 0 else ([], True)
        )
    finally:
        await double.close()
        double_proc.terminate()
        await double_proc.wait()
    await bus.close()
    body = "\n".join(
        [
            "One actions replica owning all 16 partitions (rooms in memory, their state in",
            "JetStream KV, decisions published back to the bus, spans recorded and not",
            "exported) against the bare relay (`scripts/bench/relay.py`: a durable",
            "consumer on `playout_started`, `send_data`, ack). Servers alternate, "
            f"{args.rounds} rounds each; nats-server, the load generator and the LiveKit",
            "double share the machine's 2 cores. Latency: publish of `playout_started` to the",
            "double receiving the `speaking` packet; each room's first speech is a warm-up,",
            "not measured (Packets counts it).",
            "",
            *rows,
            "",
            "Backlog drain (500 rooms x 10 playouts, waiting while the server was stopped), "
            "packets/s: "
            + "; ".join(
                f"{name} {', '.join(f'{r:.0f}' for r in rates)}" for name, rates in drains.items()
            ),
            "",
            *targets,
            "",
            "### Overload (actions service alone)",
            "",
            *over,
            "",
            "### Soak (actions service alone)",
            "",
            *(soak_lines or ["not run (`--soak-seconds 0`)"]),
        ]
    )
    return body, within


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--soak-seconds", type=float, default=300.0)
    args = parser.parse_args()
    nats_server = start_nats_process()
    try:
        body, within = asyncio.run(measure(args, nats_server))
    finally:
        nats_server.stop()
    write_section("actions", "make bench-actions", body)
    print(body)
    return 0 if within else 1


if __name__ == "__main__":
    raise SystemExit(main())
