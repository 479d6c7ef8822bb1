"""The actions service's core: events in, packets and decision events out, state kept.

For each event: load the room's state, let the rules decide, put the packets to send in
the room's outbox, send what the outbox holds, save the state; only then does the bus
ack the message, so a crash before that redelivers the event to a successor that starts
from the last saved state (an event already applied is recognised by its id and skipped).

- A packet is sent unless the sent record already has it, then recorded: redeliveries
  and successors never send it twice.
- If LiveKit is unavailable the outbox keeps the packet, and everything after it for
  that room, and retries with backoff from :meth:`Engine.tick`: the room's packets stay
  in order, other rooms are not held up, and the message is still acked (its effect,
  the outbox, is durable).
- Every decision, sent or dropped, goes back on the bus as an ``action_decision`` event
  whose id derives from its cause, so a redelivery stores it once.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable

from opentelemetry import metrics, trace

from avatar_actions.publisher import Packet, Publisher, PublishError
from avatar_actions.rules import Decision, RoomSequencer, RulesConfig
from avatar_actions.store import Outgoing, RoomStore, SentRecord, StoredRoom
from avatar_shared import semconv
from avatar_shared.bus import Bus
from avatar_shared.events import ActionDecision, DropReason, Event, Outcome

log = logging.getLogger(__name__)
_APPLIED_REMEMBERED = 64
_RETRY_BASE, _RETRY_MAX = 0.5, 10.0


class Engine:
    def __init__(
        self,
        rules: RulesConfig,
        rooms: RoomStore,
        sent: SentRecord,
        publisher: Publisher,
        bus: Bus,
        *,
        clock: Callable[[], float] = time.time,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self._rules = rules
        self._rooms = rooms
        self._sent = sent
        self._publisher = publisher
        self._bus = bus
        self._clock = clock
        self._deadlines: dict[str, float] = {}
        # The trace of the event that made a room's release due, so a gesture sent by a
        # later tick stays in the conversation turn's trace.
        self._release_trace: dict[str, trace.SpanContext] = {}
        self._tracer = trace.get_tracer("avatar_actions", tracer_provider=tracer_provider)
        meter = metrics.get_meter("avatar_actions", meter_provider=meter_provider)
        self._decisions = meter.create_counter(
            semconv.METRIC_ACTIONS_DECISIONS, description="Action decisions by outcome and reason"
        )
        self._latency = meter.create_histogram(
            semconv.METRIC_ACTIONS_LATENCY,
            unit="s",
            description="From the releasing event to the packet sent (debounce excluded)",
        )

    async def resume(self) -> None:
        """After a (re)start: find rooms with held gestures or packets still to send."""
        for room in await self._rooms.rooms():
            self._schedule(room, await self._rooms.load(room))

    async def handle(self, event: Event) -> None:
        """Apply one event; raises (so the bus redelivers) if its effect is not durable."""
        stored = await self._rooms.load(event.room)
        if event.id in stored.applied:
            return  # a redelivery of an event whose effect is already saved
        stored.avatar_id = event.avatar_id or stored.avatar_id
        await self._step(event.room, stored, lambda seq: seq.handle(event, self._clock()))
        stored.applied = [*stored.applied, event.id][-_APPLIED_REMEMBERED:]
        await self._rooms.save(event.room, stored)
        self._schedule(event.room, stored)

    def next_deadline(self) -> float | None:
        return min(self._deadlines.values(), default=None)

    async def tick(self) -> None:
        """Release, expire and retry what is due in every room whose deadline has passed."""
        now = self._clock()
        for room in [r for r, due in self._deadlines.items() if due <= now]:
            cause = self._release_trace.get(room)
            parent = trace.set_span_in_context(trace.NonRecordingSpan(cause)) if cause else None
            with self._tracer.start_as_current_span("actions release", context=parent):
                stored = await self._rooms.load(room)
                await self._step(room, stored, lambda seq: seq.tick(now))
                await self._rooms.save(room, stored)
                self._schedule(room, stored)

    async def _step(
        self,
        room: str,
        stored: StoredRoom,
        decide: Callable[[RoomSequencer], list[Decision]],
    ) -> None:
        sequencer = RoomSequencer(self._rules, stored.rules)
        now = self._clock()
        for decision in decide(sequencer):
            if decision.outcome is Outcome.PUBLISHED:
                stored.outbox.append(
                    Outgoing(
                        action=decision.action,
                        speech_id=decision.speech_id,
                        cause_id=decision.cause_id,
                        decided_at=now,
                    )
                )
            else:
                log.info(
                    "dropped action %s: %s",
                    decision.action,
                    decision.reason,
                    extra={"room": room, "speech_id": decision.speech_id},
                )
                await self._announce(room, stored, decision)
        stored.rules = sequencer.state
        if stored.retry_at is None or stored.retry_at <= now:
            await self._flush(room, stored)

    async def _flush(self, room: str, stored: StoredRoom) -> None:
        """Send the outbox in order; stop at the first packet LiveKit cannot take now."""
        while stored.outbox:
            item = stored.outbox[0]
            decision = Decision(Outcome.PUBLISHED, item.action, item.speech_id, item.cause_id)
            if not await self._sent.was_sent(room, item.cause_id, item.action):
                try:
                    await self._publisher.publish(Packet(room=room, action=item.action))
                except PublishError as exc:
                    if not exc.permanent:
                        stored.failures += 1
                        backoff = min(_RETRY_MAX, _RETRY_BASE * 2 ** (stored.failures - 1))
                        stored.retry_at = self._clock() + backoff
                        log.warning("LiveKit unavailable; retrying room in %.1fs", backoff)
                        return
                    decision = Decision(
                        Outcome.DROPPED,
                        item.action,
                        item.speech_id,
                        item.cause_id,
                        DropReason.SEND_FAILED,
                    )
                else:
                    await self._sent.mark_sent(room, item.cause_id, item.action)
                    self._latency.record(max(0.0, self._clock() - item.decided_at))
            stored.outbox.pop(0)
            stored.failures, stored.retry_at = 0, None
            await self._announce(room, stored, decision)

    def _schedule(self, room: str, stored: StoredRoom) -> None:
        deadlines = [
            d
            for d in (RoomSequencer(self._rules, stored.rules).next_deadline(), stored.retry_at)
            if d is not None
        ]
        if not deadlines:
            self._deadlines.pop(room, None)
            self._release_trace.pop(room, None)
            return
        self._deadlines[room] = min(deadlines)
        current = trace.get_current_span().get_span_context()
        if current.is_valid:
            self._release_trace[room] = current

    async def _announce(self, room: str, stored: StoredRoom, decision: Decision) -> None:
        key = f"{decision.cause_id}:{decision.action}:{decision.outcome.value}"
        event = ActionDecision(
            id=hashlib.sha256(key.encode()).hexdigest()[:32],
            room=room,
            avatar_id=stored.avatar_id,
            speech_id=decision.speech_id,
            seq=stored.decisions_seq,
            action=decision.action,
            outcome=decision.outcome,
            reason=decision.reason,
            cause_id=decision.cause_id,
        )
        stored.decisions_seq += 1
        self._decisions.add(
            1,
            {
                semconv.OUTCOME: decision.outcome.value,
                semconv.REASON: decision.reason.value if decision.reason else "",
            },
        )
        await self._bus.publish(event)
