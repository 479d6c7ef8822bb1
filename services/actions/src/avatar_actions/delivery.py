"""Delivery through the agent (``ACTIONS_DELIVERY=agent``): each packet handed to the
room's agent on the bus instead of sent with LiveKit's ``SendData``.

:class:`AgentDeliveryPublisher` is a :class:`~avatar_actions.ports.Publisher`: every rule,
state and decision of the engine stays as it is; ``publish`` stores an
``avatar_delivery`` event (``avatars.v1.actions.avatar_delivery.<room>``) whose id, and
``Nats-Msg-Id``, is the packet's nonce as hex, so a resend (a retry, a redelivered batch,
a successor redoing a crashed replica's batch) within the events stream's duplicate
window is stored once and reaches the agent once. It returns once JetStream has stored
the delivery: the engine's ``published`` means handed to the room's agent, which
publishes the payload from its participant (``avatar_agent.delivery``).

The agent answers each delivery with a ``delivery_done`` event (``sent``, ``stale``,
``failed``). This replica counts the answers to the deliveries it handed over
(``avatar.actions.agent_deliveries`` by ``avatar.outcome``); a delivery with no answer
``ack_grace`` seconds after its deadline, when no agent is in the room (the job died)
or it could not answer, is counted ``unacknowledged`` and logged. The agent never
publishes a delivery after its deadline, so "no agent" costs the packet, never a late
gesture. The count is this replica's: a delivery handed over just before a crash is
answered to no one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

import nats.errors
from opentelemetry import metrics

from avatar_actions.ports import Packet, PublishError, TooLate
from avatar_actions.publisher import reference_payload
from avatar_shared import semconv, subjects
from avatar_shared.bus import Bus
from avatar_shared.events import AvatarDelivery, DeliveryDone, InvalidEvent, decode_event

log = logging.getLogger(__name__)

#: Deliveries awaiting an answer that a replica keeps track of, at most.
MAX_PENDING = 100_000
#: The furthest deadline a delivery carries (a packet without one).
_MAX_DEADLINE_SECONDS = 3600.0


class AgentDeliveryPublisher:
    announces = True  # publish() puts an event on the bus: the engine numbers it

    def __init__(
        self,
        bus: Bus,
        *,
        topic: str = "",
        destinations: Sequence[str] = (),
        timeout: float = 5.0,
        ack_grace: float = 5.0,
        clock: Callable[[], float] = time.time,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self._bus = bus
        self._topic = topic
        self._destinations = list(destinations)
        self._timeout = timeout
        self._ack_grace = ack_grace
        self._clock = clock
        self._pending: OrderedDict[str, tuple[str, float]] = OrderedDict()  # id: room, deadline
        self._unsubscribe: Callable[[], Awaitable[None]] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        meter = metrics.get_meter("avatar_actions", meter_provider=meter_provider)
        self._outcomes = meter.create_counter(
            semconv.METRIC_ACTIONS_AGENT_DELIVERIES,
            description="Packets handed to the room's agent, by what the agent answered",
        )

    async def start(self) -> None:
        answers = subjects.type_filter(subjects.AGENT, DeliveryDone.model_fields["type"].default)
        self._unsubscribe = await self._bus.subscribe(answers, self._answered)
        self._sweeper = asyncio.create_task(self._sweep(), name="delivery-sweeper")

    async def aclose(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._unsubscribe is not None:
            with contextlib.suppress(Exception):
                await self._unsubscribe()

    async def publish(self, packet: Packet) -> None:
        now = self._clock()
        if now > packet.deadline:
            raise TooLate
        deadline = min(packet.deadline, now + _MAX_DEADLINE_SECONDS)
        delivery = AvatarDelivery(
            id=packet.nonce.hex(),
            room=packet.room,
            speech_id=packet.speech_id,
            seq=packet.seq,
            action=packet.action,
            payload=reference_payload(packet.action).decode(),
            topic=self._topic,
            destinations=self._destinations,
            deadline=datetime.fromtimestamp(deadline, UTC),
            cause_id=packet.cause_id,
        )
        try:
            async with asyncio.timeout(self._timeout):
                ack = await self._bus.publish(delivery)
        except (nats.errors.Error, TimeoutError) as exc:
            raise PublishError(f"delivery not stored: {exc!r}", permanent=False) from exc
        if not ack.duplicate:
            self._track(delivery.id, packet.room, deadline)

    def _track(self, delivery_id: str, room: str, deadline: float) -> None:
        self._pending[delivery_id] = (room, deadline)
        if len(self._pending) > MAX_PENDING:
            self._pending.popitem(last=False)
            self._outcomes.add(1, {semconv.OUTCOME: "untracked"})

    async def _answered(self, data: bytes) -> None:
        try:
            event = decode_event(data)
        except InvalidEvent as exc:
            log.warning("invalid delivery_done ignored: %s", exc)
            return
        if not isinstance(event, DeliveryDone):
            return
        if self._pending.pop(event.delivery_id, None) is not None:
            self._outcomes.add(1, {semconv.OUTCOME: event.outcome.value})

    async def _sweep(self, every: float = 1.0) -> None:
        while True:
            await asyncio.sleep(every)
            self.expire()

    def expire(self) -> int:
        """Count and forget the deliveries no agent answered in time; returns how many."""
        horizon = self._clock() - self._ack_grace
        expired = [key for key, (_, deadline) in self._pending.items() if deadline < horizon]
        for key in expired:
            room, _ = self._pending.pop(key)
            log.warning(
                "no agent answered a delivery: is the room's agent running with "
                "ACTIONS_DELIVERY=agent?",
                extra={"room": room, "delivery_id": key},
            )
        if expired:
            self._outcomes.add(len(expired), {semconv.OUTCOME: "unacknowledged"})
        return len(expired)

    @property
    def pending(self) -> int:
        return len(self._pending)


__all__ = ["AgentDeliveryPublisher"]
