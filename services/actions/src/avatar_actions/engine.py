"""The actions service's core: events in, packets and decision events out, state kept.

For each event: load the room's state, let the rules decide, carry the decisions out,
save the state; only then does the bus ack the message, so a crash before that
redelivers the event to a successor that starts from the last saved state. Carrying
out a ``published`` decision sends the packet unless the sent record already has it,
then records it; every decision, sent or dropped, goes back on the bus as an
``action_decision`` event whose id is derived from its cause, so a redelivery does not
store it twice. :meth:`Engine.tick` releases what has become due without an event.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable

from opentelemetry import metrics, trace

from avatar_actions.publisher import Packet, Publisher, PublishError
from avatar_actions.rules import Decision, RoomSequencer, RulesConfig
from avatar_actions.store import RoomStore, SentRecord, StoredRoom
from avatar_shared import semconv
from avatar_shared.bus import Bus
from avatar_shared.events import ActionDecision, DropReason, Event, Outcome

log = logging.getLogger(__name__)


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
        """After a (re)start: find rooms whose stored state still holds gestures."""
        for room in await self._rooms.rooms():
            stored = await self._rooms.load(room)
            deadline = RoomSequencer(self._rules, stored.rules).next_deadline()
            if deadline is not None:
                self._deadlines[room] = deadline

    async def handle(self, event: Event) -> None:
        """Process one event; raises (so the bus redelivers) if the effect is not durable."""
        stored = await self._rooms.load(event.room)
        stored.avatar_id = event.avatar_id or stored.avatar_id
        sequencer = RoomSequencer(self._rules, stored.rules)
        decisions = sequencer.handle(event, self._clock())
        await self._carry_out(event.room, stored, decisions, started=time.perf_counter())
        stored.rules = sequencer.state
        await self._rooms.save(event.room, stored)
        self._schedule(event.room, sequencer)

    def next_deadline(self) -> float | None:
        return min(self._deadlines.values(), default=None)

    async def tick(self) -> None:
        """Release and expire what is due in every room with a deadline passed."""
        now = self._clock()
        for room in [r for r, due in self._deadlines.items() if due <= now]:
            cause = self._release_trace.get(room)
            parent = trace.set_span_in_context(trace.NonRecordingSpan(cause)) if cause else None
            with self._tracer.start_as_current_span("actions release", context=parent):
                stored = await self._rooms.load(room)
                sequencer = RoomSequencer(self._rules, stored.rules)
                decisions = sequencer.tick(now)
                await self._carry_out(room, stored, decisions, started=time.perf_counter())
                stored.rules = sequencer.state
                await self._rooms.save(room, stored)
                self._schedule(room, sequencer)

    def _schedule(self, room: str, sequencer: RoomSequencer) -> None:
        deadline = sequencer.next_deadline()
        if deadline is None:
            self._deadlines.pop(room, None)
            self._release_trace.pop(room, None)
            return
        self._deadlines[room] = deadline
        current = trace.get_current_span().get_span_context()
        if current.is_valid:
            self._release_trace[room] = current

    async def _carry_out(
        self, room: str, stored: StoredRoom, decisions: list[Decision], *, started: float
    ) -> None:
        for decision in decisions:
            if decision.outcome is Outcome.PUBLISHED:
                decision = await self._send(room, decision)
                if decision.outcome is Outcome.PUBLISHED:
                    self._latency.record(time.perf_counter() - started)
            else:
                log.info(
                    "dropped action %s: %s",
                    decision.action,
                    decision.reason,
                    extra={"room": room, "speech_id": decision.speech_id},
                )
            self._decisions.add(
                1,
                {
                    semconv.OUTCOME: decision.outcome.value,
                    semconv.REASON: decision.reason.value if decision.reason else "",
                },
            )
            await self._announce(room, stored, decision)

    async def _send(self, room: str, decision: Decision) -> Decision:
        if await self._sent.was_sent(room, decision.cause_id, decision.action):
            return decision  # sent before a crash or redelivery: never twice
        try:
            await self._publisher.publish(Packet(room=room, action=decision.action))
        except PublishError as exc:
            if not exc.permanent:
                raise  # not durable: let the event come back
            return Decision(
                Outcome.DROPPED,
                decision.action,
                decision.speech_id,
                decision.cause_id,
                DropReason.SEND_FAILED,
            )
        await self._sent.mark_sent(room, decision.cause_id, decision.action)
        trace.get_current_span().add_event("packet sent", {"avatar.action": decision.action})
        return decision

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
        await self._bus.publish(event)
