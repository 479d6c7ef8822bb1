"""The consumption loop: pull the agent's events in stream order, tick between batches.

One durable pull consumer on ``avatars.v1.agent.>``; messages are handled one at a time
in stream order, so each room's events are applied in the order the agent published
them. Between fetches the engine's timers run; a fetch waits at most until the next
deadline, so a gesture due in 200 ms is not held up by a quiet stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import nats.errors
import nats.js
from nats.js import api

from avatar_actions.engine import Engine
from avatar_shared import subjects
from avatar_shared.bus import Bus

log = logging.getLogger(__name__)
_MAX_WAIT = 1.0
_MIN_WAIT = 0.05


def consumer_config(name: str) -> api.ConsumerConfig:
    return api.ConsumerConfig(
        name=name,
        durable_name=name,
        filter_subject=subjects.AGENT_EVENTS,
        ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=30,
        # A new consumer starts at the present: replaying a day of old conversations
        # would send stale gestures into rooms.
        deliver_policy=api.DeliverPolicy.NEW,
        max_ack_pending=1000,
    )


async def run(bus: Bus, engine: Engine, consumer: str, stop: asyncio.Event) -> None:
    await bus.ensure_consumer(subjects.EVENTS_STREAM, consumer_config(consumer))
    sub = await bus.js.pull_subscribe_bind(consumer, stream=subjects.EVENTS_STREAM)
    await engine.resume()
    log.info("consuming agent events as %s", consumer)
    try:
        while not stop.is_set():
            try:
                await _step(bus, engine, sub, consumer)
            except (nats.errors.Error, TimeoutError) as exc:
                # NATS restarting or unreachable: nothing unacked is lost; try again soon.
                log.warning("consumer step failed (%s); retrying", type(exc).__name__)
                await asyncio.sleep(_MAX_WAIT)
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()


async def _step(
    bus: Bus, engine: Engine, sub: nats.js.JetStreamContext.PullSubscription, consumer: str
) -> None:
    deadline = engine.next_deadline()
    wait = _MAX_WAIT if deadline is None else deadline - time.time()
    try:
        messages = await sub.fetch(batch=64, timeout=min(_MAX_WAIT, max(_MIN_WAIT, wait)))
    except nats.errors.TimeoutError:
        messages = []
    for message in messages:
        await bus.process(message, engine.handle, consumer=consumer)
    await engine.tick()
