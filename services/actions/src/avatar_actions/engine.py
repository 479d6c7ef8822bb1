"""The actions service's core for one partition: events in, packets and decisions out.

A partition's rooms live in memory while this replica owns the partition; the durable
copy is in the room store. :meth:`Engine.cycle` is the batch cycle:

1. **apply** each event of the batch, in stream order (the batch's rooms that are not in
   memory are read first, all at once; events the rules do not read are only acked):
   the rules decide in memory; packets join their room's outbox (an event whose id the
   room remembers is a redelivery of one already applied, and is skipped);
2. **release** what the timers made due (held gestures, retries);
3. **check the lease**: if this replica no longer holds the partition, the batch is
   abandoned, unsent and unacked, and its rooms forgotten: the next owner redoes it
   from the stored state;
4. **send** each changed room's outbox, in order; rooms concurrently, so a room waiting
   for LiveKit holds up only itself. A packet whose moment has passed is dropped as
   ``stale`` instead (``max_lag`` seconds after its cause happened on the agent's clock,
   or a ``speaking`` for a speech already done): under overload the service sheds rather
   than lags;
5. **settle** the previous batch (wait for its writes, then ack its messages), and start
   this batch's writes (room state, decisions): the next batch is taken and applied
   while they are in flight, and a batch is acked only once its effect is durable. A
   crash before that redelivers it to whoever owns the partition next.

Once, across retries, redeliveries and crashes: every packet carries a nonce derived
from its room, cause and action (:func:`~avatar_actions.ports.packet_nonce`), and
LiveKit drops a packet whose nonce it saw among the room's last 100. A batch redone by
a successor after a crash sends its packets again and LiveKit drops the copies
(docs/actions.md, "Delivery guarantee").

If LiveKit is unavailable the outbox keeps the packet, and everything after it for that
room, and retries with backoff from the timers. Every decision, sent or dropped, goes
back on the bus as an ``action_decision`` event whose id derives from its cause, so a
redelivery stores it once. A room whose session ended leaves memory once saved.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import nats.errors
from opentelemetry import context as otel_context
from opentelemetry import metrics, trace

from avatar_actions import partitions
from avatar_actions.ports import (
    Clock,
    DecisionSink,
    Packet,
    Publisher,
    PublishError,
    RoomStore,
    TooLate,
    WorkItem,
    packet_nonce,
)
from avatar_actions.rules import SPEAKING, UNREAD, Decision, RoomSequencer, RulesConfig
from avatar_actions.state import APPLIED_REMEMBERED, MAX_OUTBOX, Outgoing, StoredRoom
from avatar_shared import semconv, subjects
from avatar_shared.bus import NAK_DELAY_SECONDS, EventProcessor
from avatar_shared.events import ActionDecision, DropReason, Event, Outcome, TagParsed
from avatar_shared.retry import backoff
from avatar_shared.telemetry import tally

log = logging.getLogger(__name__)
_RETRY_BASE, _RETRY_MAX = 0.5, 10.0
#: Batches whose writes may be in flight at once; the cycle waits for the oldest past it.
MAX_BATCHES_IN_FLIGHT = 4
#: Stored rooms read at once when a partition is taken (:meth:`Engine.resume`).
RESUME_READERS = 32
#: Events applied before a batch lets the event loop run other tasks. Applying an event
#: to a room in memory never waits, so a full batch would otherwise hold the loop for its
#: whole length (tens of ms under a backlog), and every round trip of the lease
#: heartbeat, every other partition and NATS's replies would wait behind it.
YIELD_EVERY = 32


@dataclass
class _Room:
    stored: StoredRoom
    dirty: bool = False
    #: Trace of the span that decided each pending packet, by (cause id, action).
    traces: dict[tuple[str, str], trace.SpanContext] = field(default_factory=dict)
    #: Trace of the latest event, so a gesture released by a later tick stays in the
    #: conversation turn's trace.
    release: trace.SpanContext | None = None
    #: Trace of each held gesture's tag, by the tag event's id: the gesture's release,
    #: decision and packet belong to the turn whose text held the tag (forgotten once
    #: the gesture is decided on).
    tags: dict[str, trace.SpanContext] = field(default_factory=dict)


class Engine:
    def __init__(
        self,
        partition: int,
        rules: RulesConfig,
        *,
        rooms: RoomStore,
        publisher: Publisher,
        decisions: DecisionSink,
        processor: EventProcessor,
        consumer: str = "",
        holds: Callable[[], bool] = lambda: True,
        clock: Clock = time.time,
        max_rooms: int = 10_000,
        max_lag: float = 2.0,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self.partition = partition
        self._rules = rules
        self._rooms = rooms
        self._publisher = publisher
        self._decision_sink = decisions
        self._processor = processor
        self._consumer = consumer
        self._holds = holds
        self._clock = clock
        self._max_rooms = max_rooms
        self._max_lag = max_lag
        self._cache: OrderedDict[str, _Room] = OrderedDict()
        self._deadlines: dict[str, float] = {}
        #: to publish, each with the trace context of what caused it
        self._decisions: list[Announced] = []
        self._in_flight: deque[Persisting] = deque()  # batches being written, in order
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
        """On taking the partition: find the rooms with held gestures or packets to send
        among those stored (every room of the last ``ACTIONS_STATE_TTL_SECONDS``), reading
        :data:`RESUME_READERS` at a time. Only those stay in memory; the others are read
        again on their next event, so taking a partition costs no memory for the day's
        ended sessions."""
        names = iter(await self._rooms.rooms(self.partition))

        async def reader() -> None:
            for name in names:  # one iterator shared by the readers
                room = _Room(await self._rooms.load(self.partition, name))
                self._schedule(name, room)
                if name in self._deadlines:  # a gesture held, a packet to retry
                    self._cache[name] = room

        await asyncio.gather(*(reader() for _ in range(RESUME_READERS)))

    async def cycle(self, items: Sequence[WorkItem]) -> None:
        """One batch, start to end (the module docstring's steps 1-5)."""
        handled: list[WorkItem] = []
        await self._prefetch(items)
        for index, item in enumerate(items):
            if index and index % YIELD_EVERY == 0:
                await asyncio.sleep(0)  # the others' turn: leases, partitions, NATS replies
            outcome = await self._processor.process(
                item,
                self.apply,
                consumer=self._consumer,
                subject=partitions.event_subject(item.subject),
                ack=False,
            )
            if outcome == "ok":
                handled.append(item)
            elif outcome == "error":  # later events of its rooms must not overtake it
                for later in items[index + 1 :]:
                    await later.nak(delay=NAK_DELAY_SECONDS)
                break
        await self.release_due()
        if not self._holds():
            await self.settle()  # durable already: acking it is right whoever owns it now
            self._abandon()
            return
        changed = await self.send()
        self._in_flight.append(self.persist(changed, handled))
        await self._ack_written(wait=len(self._in_flight) > MAX_BATCHES_IN_FLIGHT)

    async def settle(self) -> None:
        """Wait for every batch being written; ack each once it is durable. A failed
        write raises (after the others are settled): its messages stay unacked."""
        failure: BaseException | None = None
        while self._in_flight:
            try:
                await self._in_flight.popleft().finish()
            except (nats.errors.Error, TimeoutError) as exc:
                failure = failure or exc
        if failure is not None:
            raise failure

    async def _ack_written(self, *, wait: bool) -> None:
        """Ack the batches whose writes are done, oldest first; with ``wait``, wait for
        the oldest (backpressure: at most MAX_BATCHES_IN_FLIGHT are being written)."""
        while self._in_flight and (wait or self._in_flight[0].done()):
            wait = False
            try:
                await self._in_flight.popleft().finish()
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning(
                    "partition %d: a batch's writes failed (%s); it will be redelivered",
                    self.partition,
                    type(exc).__name__,
                )

    async def apply(self, event: Event) -> None:
        """Let the rules decide on one event, in memory."""
        if event.type in UNREAD:
            return  # nothing for the rules: no state to read or write
        room = await self._room(event.room)
        stored = room.stored
        if event.id in stored.applied:
            return  # a redelivery of an event whose effect is already applied
        now = self._clock()
        happened = event.ts.timestamp()
        stored.lag = max(0.0, now - happened)
        stored.avatar_id = event.avatar_id or stored.avatar_id
        current = trace.get_current_span().get_span_context()
        if isinstance(event, TagParsed) and current.is_valid:
            room.tags[event.id] = current
        sequencer = RoomSequencer(self._rules, stored.rules)
        decisions = sequencer.handle(event, now)
        stored.rules = sequencer.state
        self._decide(event.room, room, decisions, happened)
        stored.applied = [*stored.applied, event.id][-APPLIED_REMEMBERED:]
        room.dirty = True
        room.release = current if current.is_valid else room.release

    async def release_due(self) -> None:
        """Release, expire and retry what is due in rooms whose deadline has passed;
        the rooms become changed, for the next :meth:`send`."""
        now = self._clock()
        due = [r for r, deadline in self._deadlines.items() if deadline <= now]
        for name in due:
            room = await self._room(name)
            sequencer = RoomSequencer(self._rules, room.stored.rules)
            decisions = sequencer.tick(now)
            room.stored.rules = sequencer.state
            # under the turn of the first gesture released, else the latest event's
            cause = next(
                (room.tags[d.cause_id] for d in decisions if d.cause_id in room.tags), None
            )
            cause = cause or room.release
            parent = trace.set_span_in_context(trace.NonRecordingSpan(cause)) if cause else None
            attributes: dict[str, str | int] = {
                semconv.ROOM: name,
                semconv.PARTITION: self.partition,
            }
            with self._tracer.start_as_current_span(
                "actions release", context=parent, attributes=attributes
            ):
                self._decide(name, room, decisions, now - room.stored.lag)
                room.dirty = True

    async def send(self) -> list[str]:
        """Send what the changed rooms have to send; returns those rooms, to persist."""
        dirty = [name for name, room in self._cache.items() if room.dirty]
        if len(dirty) == 1:  # the usual case: no task to schedule before the packet leaves
            await self._flush(dirty[0], self._cache[dirty[0]])
        else:
            await asyncio.gather(*(self._flush(name, self._cache[name]) for name in dirty))
        return dirty

    def persist(self, rooms: list[str], handled: Sequence[WorkItem] = ()) -> Persisting:
        """Start writing the rooms' state (serialised now) and the decisions; the batch's
        messages are acked once the writes are done. Later batches are taken, applied and
        sent meanwhile; their writes are issued after these, on the same connection, so a
        room's saves land in order."""
        decisions, self._decisions = self._decisions, []
        writes: list[Awaitable[object]] = [
            self._rooms.save(self.partition, name, self._cache[name].stored) for name in rooms
        ]
        writes += [_in_context(self._decision_sink.publish(d), ctx) for d, ctx in decisions]
        for name in rooms:
            room = self._cache[name]
            room.dirty = False
            self._schedule(name, room)
        self._evict(rooms)
        return Persisting(self, rooms, decisions, asyncio.gather(*writes), handled)

    def next_deadline(self) -> float | None:
        return min(self._deadlines.values(), default=None)

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

    def rooms_in_memory(self) -> int:
        return len(self._cache)

    def _unsaved(self, rooms: list[str], decisions: list[Announced]) -> None:
        """Writes failed: the next persist writes these rooms and decisions again."""
        for name in rooms:
            if name in self._cache:
                self._cache[name].dirty = True
        self._decisions = decisions + self._decisions  # their ids make a repeat harmless

    def _abandon(self) -> None:
        """The lease is gone: forget what this batch changed, send and write nothing."""
        for name in [n for n, room in self._cache.items() if room.dirty]:
            del self._cache[name]
            self._deadlines.pop(name, None)
        self._decisions.clear()
        log.warning(
            "partition %d lost mid-batch; its batch is left to the next owner", self.partition
        )

    # --- rooms in memory ---------------------------------------------------------------

    async def _prefetch(self, items: Sequence[WorkItem]) -> None:
        """Read the batch's rooms that are not in memory all at once, rather than one
        after the other as their events are applied. A room that cannot be read now is
        left for its event to read (and fail on, as usual)."""
        names = set()
        for item in items:
            with contextlib.suppress(ValueError, IndexError):  # not a work subject
                parts = subjects.parse_subject(partitions.event_subject(item.subject))
                if parts.type not in UNREAD:
                    names.add(parts.room)
        missing = [name for name in names if name not in self._cache]
        if not missing:
            return
        loaded = await asyncio.gather(
            *(self._rooms.load(self.partition, name) for name in missing), return_exceptions=True
        )
        for name, stored in zip(missing, loaded, strict=True):
            if isinstance(stored, StoredRoom) and name not in self._cache:
                self._cache[name] = _Room(stored)

    async def _room(self, name: str) -> _Room:
        room = self._cache.get(name)
        if room is None:
            room = _Room(await self._rooms.load(self.partition, name))
            self._cache[name] = room
        self._cache.move_to_end(name)
        return room

    def _evict(self, saved: list[str]) -> None:
        """Rooms whose session ended leave memory once saved (late events find their
        ended state in storage); past ``max_rooms``, the least recently used idle ones."""
        for name in saved:
            room = self._cache[name]
            if room.stored.rules.ended and not room.stored.outbox:
                del self._cache[name]
                self._deadlines.pop(name, None)
        excess = len(self._cache) - self._max_rooms
        for name in list(self._cache):
            if excess <= 0:
                return
            if not self._cache[name].dirty and name not in self._deadlines:
                del self._cache[name]
                excess -= 1

    # --- decisions and sending ---------------------------------------------------------

    def _decide(
        self,
        name: str,
        room: _Room,
        decisions: list[Decision],
        moment: float,
    ) -> None:
        now = self._clock()
        current = trace.get_current_span().get_span_context()
        outbox = room.stored.outbox
        for decision in decisions:
            tag = room.tags.pop(decision.cause_id, None)
            if decision.outcome is not Outcome.PUBLISHED:
                log.info(
                    "dropped action %s: %s",
                    decision.action,
                    decision.reason,
                    extra={"room": name, "speech_id": decision.speech_id},
                )
                self._announce(name, room.stored, decision, tag)
                continue
            outbox.append(
                Outgoing(
                    action=decision.action,
                    speech_id=decision.speech_id,
                    cause_id=decision.cause_id,
                    decided_at=now,
                    moment=moment,
                )
            )
            decided_in = tag or (current if current.is_valid else None)
            if decided_in is not None:
                room.traces[(decision.cause_id, decision.action)] = decided_in
            if len(outbox) > MAX_OUTBOX:  # LiveKit has been away for long: oldest first
                self._finish(name, room, outbox.pop(0), DropReason.STALE)

    def _stale(self, stored: StoredRoom, item: Outgoing) -> bool:
        if self._clock() - item.moment > self._max_lag:
            return True
        if item.action != SPEAKING or item.speech_id is None:
            return False
        speech = stored.rules.speeches.get(item.speech_id)
        return item.speech_id in stored.rules.finished or (
            speech is not None and speech.done_at is not None
        )

    async def _flush(self, name: str, room: _Room) -> None:
        """Send the outbox in order; stop at the first packet LiveKit cannot take now."""
        stored = room.stored
        if stored.retry_at is not None and stored.retry_at > self._clock():
            return
        while stored.outbox:
            item = stored.outbox[0]
            reason = await self._deliver(name, room, item)
            if isinstance(reason, _Wait):
                return
            stored.outbox.pop(0)
            stored.failures, stored.retry_at = 0, None
            self._finish(name, room, item, reason)

    async def _deliver(self, name: str, room: _Room, item: Outgoing) -> DropReason | _Wait | None:
        """Send one packet: None (sent), a DropReason, or ``_WAIT``."""
        stored = room.stored
        if self._stale(stored, item):
            return DropReason.STALE
        span = room.traces.get((item.cause_id, item.action))
        token = (
            otel_context.attach(trace.set_span_in_context(trace.NonRecordingSpan(span)))
            if span is not None
            else None
        )
        try:
            seq = 0
            if self._publisher.announces:
                seq, stored.decisions_seq = stored.decisions_seq, stored.decisions_seq + 1
            await self._publisher.publish(
                Packet(
                    name,
                    item.action,
                    packet_nonce(name, item.cause_id, item.action),
                    item.moment + self._max_lag,
                    cause_id=item.cause_id,
                    speech_id=item.speech_id,
                    seq=seq,
                )
            )
        except TooLate:
            return DropReason.STALE
        except PublishError as exc:
            if exc.permanent:
                return DropReason.SEND_FAILED
            stored.failures += 1
            wait = backoff(stored.failures - 1, base=_RETRY_BASE, cap=_RETRY_MAX, jitter=0)
            stored.retry_at = self._clock() + wait
            log.warning("LiveKit unavailable; retrying room in %.1fs", wait)
            return _WAIT
        finally:
            if token is not None:
                otel_context.detach(token)
        self._latency.record(max(0.0, self._clock() - item.decided_at))
        return None

    def _finish(self, name: str, room: _Room, item: Outgoing, reason: DropReason | None) -> None:
        cause = room.traces.pop((item.cause_id, item.action), None)
        if reason is not None:
            log.info(
                "dropped action %s: %s",
                item.action,
                reason,
                extra={"room": name, "speech_id": item.speech_id},
            )
        outcome = Outcome.PUBLISHED if reason is None else Outcome.DROPPED
        decision = Decision(outcome, item.action, item.speech_id, item.cause_id, reason)
        self._announce(name, room.stored, decision, cause)

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

    def _announce(
        self,
        name: str,
        stored: StoredRoom,
        decision: Decision,
        cause: trace.SpanContext | None = None,
    ) -> None:
        """Count the decision and queue it for the bus. It is published later, with the
        batch, under ``cause`` (the span the packet was sent under) or the span current
        now (the event's processing, the release): so it joins the turn that caused it."""
        key = f"{decision.cause_id}:{decision.action}:{decision.outcome.value}"
        made_in = (
            trace.set_span_in_context(trace.NonRecordingSpan(cause))
            if cause is not None
            else otel_context.get_current()
        )
        self._decisions.append(
            (
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
                ),
                made_in,
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


#: A decision to publish, with the trace context it was made in.
Announced = tuple[ActionDecision, otel_context.Context]


def _in_context(publish: Awaitable[object], ctx: otel_context.Context) -> asyncio.Future[object]:
    """Run ``publish`` as a task of its own started in ``ctx`` (a task keeps the context
    it was created in), so its span is a child of the decision's cause."""
    token = otel_context.attach(ctx)
    try:
        return asyncio.ensure_future(publish)
    finally:
        otel_context.detach(token)


class _Wait:
    """What :meth:`Engine._deliver` answers when LiveKit cannot take the packet now."""


_WAIT = _Wait()


def room_cap(max_rooms: int, partitions: int) -> int:
    """Rooms one partition may keep in memory, so that a replica owning every partition
    keeps at most ``max_rooms`` (idle ones first out)."""
    return max(1, math.ceil(max_rooms / partitions))


class Persisting:
    """One batch's writes in flight, and the messages to ack once they are done."""

    def __init__(
        self,
        engine: Engine,
        rooms: list[str],
        decisions: list[Announced],
        writes: asyncio.Future[list[object]],
        handled: Sequence[WorkItem],
    ) -> None:
        self._engine = engine
        self._rooms = rooms
        self._decisions = decisions
        self._writes = writes
        self._handled = handled

    def done(self) -> bool:
        return self._writes.done()

    async def finish(self) -> None:
        """Wait for the writes; ack the messages, or, if a write failed, leave them for
        redelivery and have the next batch write these rooms and decisions again."""
        try:
            await self._writes
        except BaseException:
            self._engine._unsaved(self._rooms, self._decisions)
            raise
        for item in self._handled:
            await item.ack()
