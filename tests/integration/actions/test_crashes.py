"""Replicas as processes, SIGKILLed mid-stream again and again: every room receives each
of its packets exactly once, in order (LiveKit drops resends by their nonce)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from avatar_shared.bus import Bus
from avatar_shared.events import Event, utc_now
from tests.integration.actions.test_engine import (  # noqa: F401  (fixtures)
    KEY,
    SECRET,
    Turns,
    cleanup,
    settings,
)
from tests.support.livekit_server import LiveKitDouble, running_livekit
from tests.support.nats_server import NatsServer, free_port

pytestmark = pytest.mark.timeout(240)
RUNS = 3
ROOMS = 12


@pytest.fixture
async def livekit() -> AsyncIterator[LiveKitDouble]:
    async with running_livekit(LiveKitDouble(keys={KEY: SECRET})) as double:
        yield double


class Replicas:
    def __init__(self, nats: NatsServer, livekit: LiveKitDouble) -> None:
        tag = uuid.uuid4().hex[:8]
        self.env = dict(os.environ) | {
            "NATS_URL": nats.url,
            "NATS_NKEY_SEED_FILE": str(nats.settings("actions").nkey_seed_file),
            "LIVEKIT_URL": livekit.url,
            "LIVEKIT_API_KEY": KEY,
            "LIVEKIT_API_SECRET": SECRET,
            "ACTIONS_HOST": "127.0.0.1",
            "ACTIONS_CONSUMER": f"crash-{tag}",
            "ACTIONS_PARTITIONS": "4",
            "ACTIONS_LEASE_TTL_SECONDS": "2",
            "ACTIONS_ALLOWED_ACTIONS": '["speaking", "wave_hand", "nod"]',
            "ACTIONS_DEBOUNCE_SECONDS": "0.05",
            "ACTIONS_MIN_GAP_SECONDS": "0.05",
            "ACTIONS_MAX_LAG_SECONDS": "30",  # a takeover waits out the lease: not stale
            "ACTIONS_SEND_TIMEOUT_SECONDS": "1",
            "LOG_LEVEL": "WARNING",
            "OTEL_SDK_DISABLED": "true",
        }
        self.procs: list[subprocess.Popen[bytes]] = []

    def _spawn(self, port: int) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "avatar_actions"],
            env=self.env | {"ACTIONS_PORT": str(port)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.procs.append(proc)
        return proc

    async def start(self) -> subprocess.Popen[bytes]:
        """A replica, once it has provisioned its streams and serves its health port."""
        port = free_port()
        proc = self._spawn(port)
        async with httpx.AsyncClient() as http, asyncio.timeout(30):
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                        return proc
                await asyncio.sleep(0.05)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
            if proc.poll() is None:
                proc.kill()
                proc.wait()


async def publish(bus: Bus, event: Event) -> None:
    await bus.publish(event.model_copy(update={"ts": utc_now()}))


def actions_in(livekit: LiveKitDouble, room: str) -> list[str]:
    return [
        json.loads(r.request.data)["action"] for r in livekit.received if r.request.room == room
    ]


async def converse(bus: Bus, livekit: LiveKitDouble, turns: list[Turns], speech: str) -> None:
    """One reply in every room: each ends once its speaking packet was delivered, and
    the next one starts once its gestures were (while the agent speaks, they wait)."""
    replies = [t.reply(speech, "wave_hand", "nod") for t in turns]
    before = {t.room: actions_in(livekit, t.room).count("speaking") for t in turns}
    total = {t.room: len(actions_in(livekit, t.room)) for t in turns}
    for reply in replies:
        for event in reply[:-2]:
            await publish(bus, event)
    for turn, reply in zip(turns, replies, strict=True):
        async with asyncio.timeout(60):
            while actions_in(livekit, turn.room).count("speaking") <= before[turn.room]:
                livekit.arrived.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1):
                        await livekit.arrived.wait()
        for event in reply[-2:]:
            await publish(bus, event)
    for turn in turns:
        async with asyncio.timeout(60):
            while len(actions_in(livekit, turn.room)) < total[turn.room] + 3:
                await asyncio.sleep(0.05)


async def test_sigkilled_replicas_lose_nothing_and_deliver_nothing_twice(
    bus: Bus,
    nats_server: NatsServer,
    livekit: LiveKitDouble,
    room: str,
    cleanup: None,  # noqa: F811
) -> None:
    replicas = Replicas(nats_server, livekit)
    turns = [Turns(f"{room}-{i}") for i in range(ROOMS)]
    livekit.fail_with = [503] * 3  # LiveKit answering 503 at first, as after a deploy
    try:
        running = [await replicas.start(), await replicas.start()]
        for run in range(RUNS):
            # LiveKit takes packets but holds its answers: the replicas are mid-send, with
            # nothing written or acked, when they are killed (the window a crash resends).
            livekit.stall_after_accepting = 30.0
            talking = asyncio.create_task(converse(bus, livekit, turns, f"s{run}"))
            async with asyncio.timeout(30):
                while len(livekit.received) < run * ROOMS * 3 + 1:
                    await asyncio.sleep(0.01)
            for proc in running:
                proc.send_signal(signal.SIGKILL)  # no drain, nothing acked, leases left
                proc.wait()
            livekit.stall_after_accepting = 0.0
            running = [await replicas.start(), await replicas.start()]
            await talking
        expected = ["speaking", "wave_hand", "nod"] * RUNS
        async with asyncio.timeout(60):
            while any(actions_in(livekit, t.room) != expected for t in turns):
                await asyncio.sleep(0.1)
    finally:
        replicas.stop_all()
    for turn in turns:
        assert actions_in(livekit, turn.room) == expected
    assert len(livekit.received) == ROOMS * 3 * RUNS
    # Successors redid the killed replicas' unacked batches: what they sent again LiveKit
    # dropped by its nonce (livekit.duplicates), or was shed as stale when the speech had
    # ended meanwhile; without the nonce check this test fails.
