"""Delivery through the agent (``ACTIONS_DELIVERY=agent``): the room's packets, published
from the agent's own participant.

The actions service hands each ``AVATAR_UPDATE`` packet to the room's agent as an
``avatar_delivery`` event. :class:`RoomDeliveries` reads this room's deliveries from the
events stream through a durable consumer of its own (one per job, created when the job
starts, ``DeliverPolicy.NEW``, at most one delivery unacknowledged: strict order) and, for
each, in order:

- publishes the payload with ``local_participant.publish_data(reliable=True, topic=...,
  destination_identities=...)``, retrying until the delivery's deadline; a delivery past
  its deadline is not published (``stale``) and one that could not be published by then
  is ``failed``;
- reports the outcome as a ``delivery_done`` event and acknowledges the delivery.

Once per delivery id: a redelivered delivery (the acknowledgement was lost, the consumer
was restarted, a publish was cut short) whose id this job has taken up is acknowledged
and not published again: at most once.
A new job in the room (the previous one died) starts after the deliveries that were
meant for its predecessor, so it sends none of them late. The one window left: a job
killed between ``publish_data`` and its acknowledgement has published a packet whose
``delivery_done`` never comes (the actions service counts it ``unacknowledged``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Protocol

from livekit import rtc
from nats.js import api
from opentelemetry import trace

from avatar_agent.outbox import EventOutbox
from avatar_shared import semconv, subjects
from avatar_shared.bus import Bus
from avatar_shared.events import AvatarDelivery, DeliveryDone, DeliveryOutcome, Event
from avatar_shared.retry import backoff

log = logging.getLogger(__name__)

#: ``publish_data(payload, topic, destinations)``: the agent participant's, or a log line.
PublishData = Callable[[bytes, str, Sequence[str]], Awaitable[None]]
#: Delivery ids a job remembers as handled (far more than can be unacknowledged at once).
REMEMBERED = 1024
#: A consumer left behind by a job that died is deleted by the server after this long.
CONSUMER_INACTIVE = timedelta(minutes=5)
#: Longer than any delivery's deadline: a delivery being published is not redelivered.
ACK_WAIT = timedelta(seconds=30)


class BusSource(Protocol):
    async def get(self) -> Bus: ...


def publish_from(participant: rtc.LocalParticipant) -> PublishData:
    """The agent participant's ``publish_data``, as the reference agent calls it."""

    async def publish(payload: bytes, topic: str, destinations: Sequence[str]) -> None:
        await participant.publish_data(
            payload, reliable=True, topic=topic, destination_identities=list(destinations)
        )

    return publish


def consumer_name(room: str, job: str) -> str:
    digest = hashlib.sha256(f"{room}\n{job}".encode()).hexdigest()[:24]
    return f"agent-delivery-{digest}"


class RoomDeliveries:
    def __init__(
        self,
        bus: BusSource,
        *,
        room: str,
        job: str,
        publish_data: PublishData,
        outbox: EventOutbox,
        clock: Callable[[], float] = time.time,
        retry_base: float = 0.05,
        retry_max: float = 0.5,
        ack_wait: timedelta = ACK_WAIT,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        self._bus = bus
        self._room = room
        self._name = consumer_name(room, job)
        self._publish_data = publish_data
        self._outbox = outbox
        self._clock = clock
        self._retry_base = retry_base
        self._retry_max = retry_max
        self._ack_wait = ack_wait
        self._handled: OrderedDict[str, None] = OrderedDict()
        self._task: asyncio.Task[None] | None = None
        self._tracer = trace.get_tracer(
            semconv.INSTRUMENTATION_NAME, tracer_provider=tracer_provider
        )
        self.ready = asyncio.Event()  # the consumer exists: deliveries from now on are ours

    def config(self) -> api.ConsumerConfig:
        return api.ConsumerConfig(
            # A name (not only a durable name) puts the filter in the API subject, which
            # the agent's NATS permissions require to be a delivery subject.
            name=self._name,
            durable_name=self._name,
            filter_subject=subjects.subject_for(
                subjects.ACTIONS, AvatarDelivery.model_fields["type"].default, self._room
            ),
            deliver_policy=api.DeliverPolicy.NEW,
            ack_policy=api.AckPolicy.EXPLICIT,
            max_ack_pending=1,
            ack_wait=self._ack_wait.total_seconds(),
            inactive_threshold=CONSUMER_INACTIVE.total_seconds(),
        )

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"deliveries:{self._room}")

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                bus = await self._bus.get()
                await bus.ensure_consumer(subjects.EVENTS_STREAM, self.config())
                self.ready.set()
                failures = 0
                await self._consume(bus)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # NATS away or restarted, the consumer lost: take it up again; the
                # durable consumer remembers what was acknowledged.
                delay = backoff(failures, base=0.5, cap=10.0)
                failures += 1
                log.warning(
                    "delivery consumer failed, restarting in %.1fs: %s",
                    delay,
                    exc,
                    extra={"room": self._room},
                )
                await asyncio.sleep(delay)

    async def _consume(self, bus: Bus) -> None:
        feed = bus.pull_feed(subjects.EVENTS_STREAM, self._name, batch=1)
        await feed.start()
        try:
            while True:
                for msg in await feed.take(wait=5.0):
                    await bus.process(msg, self._handle, consumer=self._name)
        finally:
            await feed.stop()

    async def _handle(self, event: Event) -> None:
        if not isinstance(event, AvatarDelivery):
            return
        if event.id in self._handled:
            log.info("delivery already handled: not published again", extra={"room": self._room})
            return
        # Remembered before publishing: a publish cut short (the job's consumer restarted
        # mid-call) may have reached the room, so its redelivery is not published again.
        self._handled[event.id] = None
        if len(self._handled) > REMEMBERED:
            self._handled.popitem(last=False)
        outcome = await self._publish(event)
        self._outbox.emit(
            DeliveryDone, speech_id=event.speech_id, delivery_id=event.id, outcome=outcome
        )

    async def _publish(self, event: AvatarDelivery) -> DeliveryOutcome:
        deadline = event.deadline.timestamp()
        payload = event.payload.encode()
        with self._tracer.start_as_current_span(
            "publish_data",
            kind=trace.SpanKind.PRODUCER,
            attributes={
                semconv.ROOM: self._room,
                semconv.ACTION: event.action,
                "lk.data.topic": event.topic,
                "lk.data.reliable": True,
            },
        ) as span:
            attempt = 0
            while True:
                if self._clock() > deadline:
                    outcome = DeliveryOutcome.STALE if attempt == 0 else DeliveryOutcome.FAILED
                    break
                try:
                    async with asyncio.timeout(max(0.01, deadline - self._clock())):
                        await self._publish_data(payload, event.topic, event.destinations)
                    outcome = DeliveryOutcome.SENT
                    break
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning(
                        "publish_data failed (attempt %d): %s",
                        attempt + 1,
                        exc or type(exc).__name__,
                        extra={"room": self._room},
                    )
                await asyncio.sleep(backoff(attempt, base=self._retry_base, cap=self._retry_max))
                attempt += 1
            span.set_attribute(semconv.OUTCOME, outcome.value)
            span.set_attribute(semconv.SEND_ATTEMPTS, attempt + 1)
        if outcome is not DeliveryOutcome.SENT:
            log.warning("delivery %s: %s", outcome.value, event.action, extra={"room": self._room})
        return outcome
