"""The agent's readiness: NATS answers (and, as a worker, LiveKit registered it)."""

from __future__ import annotations

import asyncio

import httpx

from avatar_agent.probes import Probes
from avatar_agent.runtime import LazyBus
from avatar_shared.config import NatsSettings
from tests.support.nats_server import NatsServer, free_port


async def test_ready_once_nats_answers_and_every_check_passes(nats_server: NatsServer) -> None:
    registered: list[str] = []
    bus = LazyBus(nats_server.settings("agent"), name="probe-test")
    probes = Probes(bus, lambda: None if registered else "not registered with LiveKit")
    port = free_port()
    await probes.start("127.0.0.1", port)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            assert (await http.get("/healthz")).status_code == 200
            async with asyncio.timeout(10):
                while "NATS" in (await http.get("/readyz")).text:
                    await asyncio.sleep(0.05)
            answer = await http.get("/readyz")
            assert answer.status_code == 503
            assert answer.json()["reasons"] == ["not registered with LiveKit"]
            registered.append("worker-1")
            assert (await http.get("/readyz")).status_code == 200
    finally:
        await probes.stop()
        await bus.close()


async def test_not_ready_while_nats_is_unreachable() -> None:
    bus = LazyBus(NatsSettings(url=f"nats://127.0.0.1:{free_port()}"), name="probe-test")
    probes = Probes(bus)
    port = free_port()
    await probes.start("127.0.0.1", port)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            answer = await http.get("/readyz")
        assert answer.status_code == 503
        assert answer.json() == {"status": "not_ready", "reasons": ["NATS is not connected"]}
    finally:
        await probes.stop()
        await bus.close()
