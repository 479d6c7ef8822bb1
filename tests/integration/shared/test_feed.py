"""PullFeed: messages as they are stored, requests renewed when they expire or are lost."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext, api

from avatar_shared.bus import PullFeed
from tests.support.nats_server import NatsServer

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def stream(js: JetStreamContext) -> AsyncIterator[str]:
    name = f"FEED_{uuid.uuid4().hex[:8]}"
    await js.add_stream(api.StreamConfig(name=name, subjects=[f"{name}.>"]))
    await js.add_consumer(
        name, api.ConsumerConfig(durable_name="c", ack_policy=api.AckPolicy.EXPLICIT)
    )
    yield name
    await js.delete_stream(name)


async def _feed(
    nc: NatsClient,
    stream: str,
    *,
    batch: int = 8,
    expires: float = 10.0,
    heartbeat: float = 1.0,
) -> PullFeed:
    feed = PullFeed(nc, stream, "c", batch=batch, expires=expires, heartbeat=heartbeat)
    await feed.start()
    return feed


async def test_a_lone_message_arrives_without_waiting_for_a_full_batch(
    nats_client: NatsClient, js: JetStreamContext, stream: str
) -> None:
    feed = await _feed(nats_client, stream)
    assert await feed.take(0.05) == []  # the request is out; nothing stored yet
    started = time.monotonic()
    await js.publish(f"{stream}.a", b"1")
    [msg] = await feed.take(5.0)
    assert msg.data == b"1"
    assert time.monotonic() - started < 0.5
    await msg.ack()
    await feed.stop()


async def test_take_returns_what_has_arrived_in_order_up_to_the_batch(
    nats_client: NatsClient, js: JetStreamContext, stream: str
) -> None:
    for i in range(20):
        await js.publish(f"{stream}.a", str(i).encode())
    feed = await _feed(nats_client, stream, batch=8)
    seen: list[bytes] = []
    while len(seen) < 20:
        taken = await feed.take(2.0)
        assert 0 < len(taken) <= 8
        seen += [m.data for m in taken]
        for m in taken:
            await m.ack()
    assert seen == [str(i).encode() for i in range(20)]
    await feed.stop()


async def test_expired_requests_are_renewed(
    nats_client: NatsClient, js: JetStreamContext, stream: str
) -> None:
    feed = await _feed(nats_client, stream, expires=0.2, heartbeat=0.1)
    assert await feed.take(1.0) == []  # several requests expired meanwhile (408s)
    await js.publish(f"{stream}.a", b"late")
    [msg] = await feed.take(2.0)
    assert msg.data == b"late"
    await feed.stop()


async def test_requests_lost_with_a_server_restart_are_asked_again(
    nats_client: NatsClient, js: JetStreamContext, stream: str, nats_server: NatsServer
) -> None:
    feed = await _feed(nats_client, stream, heartbeat=0.2)
    assert await feed.take(0.05) == []
    await asyncio.to_thread(nats_server.restart)  # the outstanding request dies with it
    async with asyncio.timeout(20):
        while True:
            try:
                await js.publish(f"{stream}.a", b"after")
                break
            except Exception:  # reconnecting
                await asyncio.sleep(0.1)
    async with asyncio.timeout(10):
        taken: list[object] = []
        while not taken:
            taken = await feed.take(1.0)
    await feed.stop()
