"""The actions service's core for one partition: events in, packets and decisions out.

A partition's rooms live in memory while this replica owns the partition; the durable
copy is in JetStream KV. Work goes in batches (:meth:`Engine.apply` for each event of a
taken batch, :meth:`Engine.release_due` for the timers, then :meth:`Engine.send` and
:meth:`Engine.persist`):

1. apply: the rules decide in memory; packets join their room's outbox;
2. send: each room's outbox goes out in order; rooms are sent concurrently, so a room
   waiting for LiveKit holds up only itself;
3. persist: the touched rooms' state and the decision events are written
   concurrently, while the next batch is taken and applied; the batch's messages are
   acked once the writes succeeded. A crash before that redelivers them to whoever
   owns the partition next, who starts from the last saved state (an event already
   applied is recognised by its id and skipped).

At most once: each packet sent is recorded in the sent record at once. It is looked up
there before sending only when someone else may have sent it: its event is a
redelivery, its room's state was inherited from storage (a predecessor may have sent
after its last save), or an earlier attempt failed in a way that may have delivered it.
A first delivery to the owner skips the lookup.

If LiveKit is unavailable the outbox keeps the packet, and everything after it for that
room, and retries with backoff from the timers. Every decision, sent or dropped, goes
back on the bus as an ``action_decision`` event whose id derives from its cause, so a
redelivery stores it once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace

from avatar_actions.publisher import Packet, Publisher, PublishError
from avatar_actions.rules import Decision, RoomSequencer, RulesConfig
from avatar_actions.store import Outgoing, RoomStore, SentRecord, StoredRoom
from avatar_shared import semconv
from avatar_shared.bus import Bus
from avatar_shared.events import ActionDecision, DropReason, Event, Outcome
from avatar_shared.retry import backoff
from avatar_shared.telemetry import tally

log = logging.getLogger(__name__)
_APPLIED_REMEMBERED = 64
_RETRY_BASE, _RETRY_MAX = 0.5, 10.0


@dataclass
class _Room:
    stored: StoredRoom
    #: Loaded from storage: a predecessor may have sent packets after its last save.
    inherited: bool
    dirty: bool = False
    #: Trace of the span that decided each pending packet, by (cause id, action).
    traces: dict[tuple[str, str], trace.SpanContext] = field(default_factory=dict)
    #: Trace of the latest event, so a gesture released by a later tick stays in the
    #: conversation turn's trace.
    release: trace.SpanContext | None = None


class Engine:
    def __init__(
        self,
        partition: int,
        rules: RulesConfig,
        rooms: RoomStore,
        sent: SentRecord,
        publisher: Publisher,
        bus: Bus,
        *,
        clock: Callable[[], float] = time.time,
        max_rooms: int = 10_000,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self.partition = partition
        self._rules = rules
        self._rooms = rooms
        self._sent = sent
        self._publisher = publisher
        self._bus = bus
        self._clock = clock
        self._max_rooms = max_rooms
        self._cache: OrderedDict[str, _Room] = OrderedDict()
        self._deadlines: dict[str, float] = {}
        self._decisions: list[ActionDecision] = []  # to publish
        self._marking: list[asyncio.Future[None]] = []  # sent-record writes in flight
        self._tracer = trace.get_tracer("avatar_actions", tracer_provider=tracer_provider)
        meter = metrics.get_meter("avatar_actions", meter_provider=meter_provider)
        self._decision_count = tally(
            meter, semconv.METRIC_ACTIONS_DECISIONS, "Action decisions by outcome and reason"
        )
        self._latency = meter.create_histogram(
            semconv.METRIC_ACTIONS_LATENCY,
            unit="s",
            description="From the releasing event to the packet sent (debounce excluded)",
        )

    # --- the batch cycle ---------------------------------------------------------------

    async def resume(self) -> None:
        """On taking the partition: find rooms with held gestures or packets to send."""
        for room in await self._rooms.rooms(self.partition):
            self._schedule(room, await self._room(room))

    async def apply(self, event: Event, *, redelivered: bool = False) -> None:
        """Let the rules decide on one event, in memory; :meth:`send` and :meth:`persist`
        carry the decisions out and make them durable."""
        room = await self._room(event.room)
        stored = room.stored
        if event.id in stored.applied:
            return  # a redelivery of an event whose effect is already applied
        stored.avatar_id = event.avatar_id or stored.avatar_id
        sequencer = RoomSequencer(self._rules, stored.rules)
        self._decide(event.room, room, sequencer.handle(event, self._clock()), redelivered)
        stored.rules = sequencer.state
        stored.applied = [*stored.applied, event.id][-_APPLIED_REMEMBERED:]
        room.dirty = True
        current = trace.get_current_span().get_span_context()
        room.release = current if current.is_valid else room.release

    async def send(self) -> list[str]:
        """Send what the changed rooms have to send; returns those rooms, to persist."""
        dirty = [name for name, room in self._cache.items() if room.dirty]
        if len(dirty) == 1:  # the usual case: no task to schedule before the packet leaves
            await self._flush(dirty[0], self._cache[dirty[0]])
        else:
            await asyncio.gather(*(self._flush(name, self._cache[name]) for name in dirty))
        return dirty

    def persist(self, rooms: list[str]) -> Persisting:
        """Start writing the rooms' state and the decisions; await the result before
        acking the batch. The next batch may be applied and sent meanwhile: its writes
        start after these are done, so a room's saves land in order."""
        decisions, self._decisions = self._decisions, []
        writes: list[Awaitable[object]] = [
            self._rooms.save(self.partition, name, self._cache[name].stored) for name in rooms
        ]
        writes += [self._bus.publish(decision) for decision in decisions]
        writes += self._marking
        self._marking = []
        for name in rooms:
            room = self._cache[name]
            room.dirty = room.inherited = False
            self._schedule(name, room)
        self._evict()
        return Persisting(self, rooms, decisions, asyncio.gather(*writes))

    def _unsaved(self, rooms: list[str], decisions: list[ActionDecision]) -> None:
        """Writes failed: the next persist writes these rooms and decisions again."""
        for name in rooms:
            if name in self._cache:
                self._cache[name].dirty = True
        self._decisions = decisions + self._decisions  # their ids make a repeat harmless

    def held(self) -> int:
        """Gestures held in this partition's rooms, waiting for their release."""
        return sum(
            len(speech.held)
            for room in self._cache.values()
            for speech in room.stored.rules.speeches.values()
        )

    def waiting(self) -> int:
        """Packets decided on and not yet sent (LiveKit unavailable)."""
        return sum(len(room.stored.outbox) for room in self._cache.values())

    def next_deadline(self) -> float | None:
        return min(self._deadlines.values(), default=None)

    async def release_due(self) -> None:
        """Release, expire and retry what is due in rooms whose deadline has passed;
        the rooms become changed, for the next :meth:`send`."""
        now = self._clock()
        due = [r for r, deadline in self._deadlines.items() if deadline <= now]
        for name in due:
            room = await self._room(name)
            cause = room.release
            parent = trace.set_span_in_context(trace.NonRecordingSpan(cause)) if cause else None
            with self._tracer.start_as_current_span("actions release", context=parent):
                sequencer = RoomSequencer(self._rules, room.stored.rules)
                self._decide(name, room, sequencer.tick(now), False)
                room.stored.rules = sequencer.state
                room.dirty = True

    # --- rooms in memory ---------------------------------------------------------------

    async def _room(self, name: str) -> _Room:
        room = self._cache.get(name)
        if room is None:
            room = _Room(await self._rooms.load(self.partition, name), inherited=True)
            self._cache[name] = room
        self._cache.move_to_end(name)
        return room

    def _evict(self) -> None:
        """Forget the least recently used rooms that have nothing pending."""
        excess = len(self._cache) - self._max_rooms
        for name in list(self._cache):
            if excess <= 0:
                return
            if not self._cache[name].dirty and name not in self._deadlines:
                del self._cache[name]
                excess -= 1

    # --- decisions and sending ---------------------------------------------------------

    def _decide(self, name: str, room: _Room, decisions: list[Decision], redelivered: bool) -> None:
        now = self._clock()
        current = trace.get_current_span().get_span_context()
        for decision in decisions:
            if decision.outcome is Outcome.PUBLISHED:
                room.stored.outbox.append(
                    Outgoing(
                        action=decision.action,
                        speech_id=decision.speech_id,
                        cause_id=decision.cause_id,
                        decided_at=now,
                        verify=redelivered or room.inherited,
                    )
                )
                if current.is_valid:
                    room.traces[(decision.cause_id, decision.action)] = current
            else:
                log.info(
                    "dropped action %s: %s",
                    decision.action,
                    decision.reason,
                    extra={"room": name, "speech_id": decision.speech_id},
                )
                self._announce(name, room.stored, decision)

    async def _flush(self, name: str, room: _Room) -> None:
        """Send the outbox in order; stop at the first packet LiveKit cannot take now."""
        stored = room.stored
        if stored.retry_at is not None and stored.retry_at > self._clock():
            return
        while stored.outbox:
            item = stored.outbox[0]
            decision = Decision(Outcome.PUBLISHED, item.action, item.speech_id, item.cause_id)
            key = (item.cause_id, item.action)
            if not (item.verify and await self._sent.was_sent(name, item.cause_id, item.action)):
                span = room.traces.get(key)
                token = (
                    otel_context.attach(trace.set_span_in_context(trace.NonRecordingSpan(span)))
                    if span is not None
                    else None
                )
                try:
                    await self._publisher.publish(Packet(room=name, action=item.action))
                except PublishError as exc:
                    if not exc.permanent:
                        item.verify = True  # a timed-out attempt may have delivered it
                        stored.failures += 1
                        wait = backoff(
                            stored.failures - 1, base=_RETRY_BASE, cap=_RETRY_MAX, jitter=0
                        )
                        stored.retry_at = self._clock() + wait
                        log.warning("LiveKit unavailable; retrying room in %.1fs", wait)
                        return
                    decision = Decision(
                        Outcome.DROPPED,
                        item.action,
                        item.speech_id,
                        item.cause_id,
                        DropReason.SEND_FAILED,
                    )
                else:
                    self._latency.record(max(0.0, self._clock() - item.decided_at))
                    # Recorded at once (the write leaves now; the batch's ack waits for
                    # it): the window in which a crash forgets a delivered packet stays
                    # one round trip wide, and the room's next packet need not wait.
                    self._marking.append(
                        asyncio.ensure_future(
                            self._sent.mark_sent(name, item.cause_id, item.action)
                        )
                    )
                finally:
                    if token is not None:
                        otel_context.detach(token)
            stored.outbox.pop(0)
            room.traces.pop(key, None)
            stored.failures, stored.retry_at = 0, None
            self._announce(name, stored, decision)

    def _schedule(self, name: str, room: _Room) -> None:
        stored = room.stored
        deadlines = [
            d
            for d in (RoomSequencer(self._rules, stored.rules).next_deadline(), stored.retry_at)
            if d is not None
        ]
        if deadlines:
            self._deadlines[name] = min(deadlines)
        else:
            self._deadlines.pop(name, None)

    def _announce(self, name: str, stored: StoredRoom, decision: Decision) -> None:
        key = f"{decision.cause_id}:{decision.action}:{decision.outcome.value}"
        self._decisions.append(
            ActionDecision(
                id=hashlib.sha256(key.encode()).hexdigest()[:32],
                room=name,
                avatar_id=stored.avatar_id,
                speech_id=decision.speech_id,
                seq=stored.decisions_seq,
                action=decision.action,
                outcome=decision.outcome,
                reason=decision.reason,
                cause_id=decision.cause_id,
            )
        )
        stored.decisions_seq += 1
        self._decision_count.add(
            1,
            {
                semconv.OUTCOME: decision.outcome.value,
                semconv.REASON: decision.reason.value if decision.reason else "",
            },
        )


class Persisting:
    """Writes in flight for one batch."""

    def __init__(
        self,
        engine: Engine,
        rooms: list[str],
        decisions: list[ActionDecision],
        writes: asyncio.Future[list[object]],
    ) -> None:
        self._engine = engine
        self._rooms = rooms
        self._decisions = decisions
        self._writes = writes

    async def wait(self) -> None:
        try:
            await self._writes
        except BaseException:
            self._engine._unsaved(self._rooms, self._decisions)
            raise
