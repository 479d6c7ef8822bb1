"""The bare relay: the baseline the actions service is measured against.

A JetStream durable consumer on ``playout_started`` (read through the same
:class:`~avatar_shared.bus.PullFeed` as the service), each message's ``AVATAR_UPDATE``
sent with livekit-api's ``send_data`` (the batch's rooms concurrently), then acked.
uvloop, no rules, no state, no tracing, nothing else: what any service that relays
agent events to LiveKit must at least do. ``python -m scripts.bench.relay`` with
``NATS_URL`` and ``LIVEKIT_*`` set; stops on SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal

import uvloop
from livekit import api
from nats.js import api as js_api

from avatar_shared import subjects
from avatar_shared.bus import Bus, Delivered, events_stream
from avatar_shared.config import NatsSettings, load

CONSUMER = "bench-relay"
BATCH = 256


PAYLOAD = json.dumps({"type": "AVATAR_UPDATE", "action": "speaking"}).encode()


async def relay(stop: asyncio.Event) -> None:
    bus = await Bus.connect(load(NatsSettings), name="bench-relay")
    lk = api.LiveKitAPI(
        os.environ["LIVEKIT_URL"], os.environ["LIVEKIT_API_KEY"], os.environ["LIVEKIT_API_SECRET"]
    )
    await bus.ensure_stream(events_stream())
    await bus.ensure_consumer(
        subjects.EVENTS_STREAM,
        js_api.ConsumerConfig(
            name=CONSUMER,
            durable_name=CONSUMER,
            filter_subject=f"{subjects.PREFIX}.{subjects.AGENT}.playout_started.>",
            ack_policy=js_api.AckPolicy.EXPLICIT,
            deliver_policy=js_api.DeliverPolicy.NEW,
            max_ack_pending=2000,
        ),
    )
    feed = bus.pull_feed(subjects.EVENTS_STREAM, CONSUMER, batch=BATCH)
    await feed.start()

    async def send(msg: Delivered) -> None:
        room = subjects.parse_subject(msg.subject).room
        await lk.room.send_data(
            api.SendDataRequest(room=room, data=PAYLOAD, kind=api.DataPacket.Kind.RELIABLE)
        )
        await msg.ack()

    try:
        while not stop.is_set():
            taken = await feed.take(0.5)
            await asyncio.gather(*(send(msg) for msg in taken))
    finally:
        await feed.stop()
        await bus.close()
        await lk.aclose()


async def main() -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await relay(stop)


if __name__ == "__main__":
    uvloop.run(main())
