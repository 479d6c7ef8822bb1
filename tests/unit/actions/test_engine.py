"""The engine's batch cycle on in-memory ports, with a clock moved by hand: what is sent,
decided, written and acked, through redelivery, crashes, LiveKit outages, lost leases
and overload."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from avatar_actions.engine import MAX_BATCHES_IN_FLIGHT, RESUME_READERS, YIELD_EVERY, Engine
from avatar_actions.rules import RulesConfig
from avatar_actions.state import MAX_OUTBOX, StoredRoom
from avatar_shared.bus import EventProcessor, Processed
from avatar_shared.events import DeliveryDone, DeliveryOutcome, SessionEnded, SessionStarted
from tests.unit.actions.fakes import (
    Clock,
    Crash,
    Decisions,
    FakeLiveKit,
    Item,
    MemoryRooms,
    Turns,
    items,
)

RULES = RulesConfig(allowed={"speaking", "wave_hand", "nod"}, debounce=0.2, min_gap=0.5)
ROOM = "room-1"


@dataclass
class World:
    """What outlives one replica: the stores, LiveKit, the bus, the lease, the time."""

    clock: Clock = field(default_factory=Clock)
    rooms: MemoryRooms = field(default_factory=MemoryRooms)
    livekit: FakeLiveKit = field(default_factory=FakeLiveKit)
    decisions: Decisions = field(default_factory=Decisions)
    holding: bool = True

    def replica(self, *, max_lag: float = 2.0, max_rooms: int = 100) -> Engine:
        """A fresh replica's engine for partition 0: empty memory, the same world."""
        return Engine(
            0,
            RULES,
            rooms=self.rooms,
            publisher=self.livekit,
            decisions=self.decisions,
            processor=EventProcessor(),
            holds=lambda: self.holding,
            clock=self.clock,
            max_lag=max_lag,
            max_rooms=max_rooms,
        )

    async def run(self, engine: Engine, seconds: float, step: float = 0.1) -> None:
        """Let time pass, cycling as the worker does when nothing arrives."""
        for _ in range(round(seconds / step)):
            self.clock.now += step
            await engine.cycle([])


@pytest.fixture
def world() -> World:
    return World()


async def test_a_turn_sends_speaking_at_playout_then_its_gestures_in_order(world: World) -> None:
    engine = world.replica()
    turn = Turns(ROOM, world.clock)
    opening = items(turn.opening("s1", "wave_hand", "nod"))
    await engine.cycle(opening)
    assert world.livekit.actions(ROOM) == ["speaking"]
    assert all(i.settled == [] for i in opening)  # acked once the batch is durable
    world.clock.now += 2
    closing = items(turn.closing("s1"))
    await engine.cycle(closing)
    await world.run(engine, 1.0)
    assert all(i.settled == ["ack"] for i in opening)  # its writes done, acked by a cycle
    assert world.livekit.actions(ROOM) == ["speaking", "wave_hand", "nod"]
    await engine.settle()
    assert all(i.settled == ["ack"] for i in closing)
    assert world.decisions.of(ROOM) == [
        ("speaking", "published", None),
        ("wave_hand", "published", None),
        ("nod", "published", None),
    ]


async def test_a_redelivered_batch_sends_nothing_twice(world: World) -> None:
    engine = world.replica()
    turn = Turns(ROOM, world.clock)
    opening = items(turn.opening("s1", "wave_hand"))
    await engine.cycle(opening)
    await engine.settle()
    redelivered = [i.again() for i in opening]  # JetStream delivers the batch again
    await engine.cycle(redelivered)
    await engine.settle()
    assert world.livekit.actions(ROOM) == ["speaking"]
    assert all(i.settled == ["ack"] for i in redelivered)
    assert world.decisions.of(ROOM) == [("speaking", "published", None)]  # no new verdicts


async def test_a_crash_after_sending_delivers_nothing_twice(world: World) -> None:
    first = world.replica()
    turn = Turns(ROOM, world.clock)
    opening = items(turn.opening("s1", "wave_hand"))
    world.livekit.crash_after_send = True
    with pytest.raises(Crash):  # LiveKit took the packet; the replica died before acking
        await first.cycle(opening)
    world.livekit.crash_after_send = False
    assert world.rooms.saved == {}  # nothing was written: the batch is redelivered
    successor = world.replica()
    await successor.resume()
    await successor.cycle([i.again() for i in opening])
    await successor.cycle(items(turn.closing("s1")))
    await world.run(successor, 1.0)
    assert [p.action for p in world.livekit.calls] == ["speaking", "speaking", "wave_hand"]
    # The successor sent the speaking packet again, with the same nonce: LiveKit dropped it.
    assert world.livekit.calls[0].nonce == world.livekit.calls[1].nonce
    assert world.livekit.actions(ROOM) == ["speaking", "wave_hand"]


async def test_an_answer_lost_after_delivery_is_retried_and_delivered_once(world: World) -> None:
    engine = world.replica()
    world.livekit.lost_answer = True
    await engine.cycle(items(Turns(ROOM, world.clock).opening("s1")))
    world.livekit.lost_answer = False
    await world.run(engine, 1.0)  # retried after 0.5 s
    assert len(world.livekit.calls) == 2
    assert world.livekit.actions(ROOM) == ["speaking"]


async def test_livekit_down_keeps_packets_in_order_and_the_batch_is_acked(world: World) -> None:
    engine = world.replica(max_lag=60)
    turn = Turns(ROOM, world.clock)
    world.livekit.down = True
    opening = items(turn.opening("s1", "wave_hand"))
    await engine.cycle(opening)
    await world.run(engine, 1.0)
    assert world.livekit.delivered == []
    assert engine.waiting() == 1
    assert all(i.settled == ["ack"] for i in opening)  # the outbox is durable
    world.livekit.down = False
    await world.run(engine, 2.0)  # retried: 0.5 s, then 1 s, ...
    assert world.livekit.actions(ROOM) == ["speaking"]
    await engine.cycle(items(turn.closing("s1")))
    await world.run(engine, 1.0)
    assert world.livekit.actions(ROOM) == ["speaking", "wave_hand"]


async def test_livekit_back_only_after_the_speech_ended_sends_no_speaking(
    world: World,
) -> None:
    engine = world.replica(max_lag=60)
    turn = Turns(ROOM, world.clock)
    world.livekit.down = True
    await engine.cycle(items(turn.opening("s1", "wave_hand")))
    world.clock.now += 1
    await engine.cycle(items(turn.closing("s1")))
    world.livekit.down = False
    await world.run(engine, 12.0)
    assert world.livekit.actions(ROOM) == ["wave_hand"]


async def test_a_refused_packet_is_dropped_with_its_reason(world: World) -> None:
    engine = world.replica()
    world.livekit.refuse = True
    await engine.cycle(items(Turns(ROOM, world.clock).opening("s1")))
    await engine.settle()
    assert world.decisions.of(ROOM) == [("speaking", "dropped", "send_failed")]


async def test_a_lease_lost_mid_batch_leaves_the_batch_to_the_next_owner(world: World) -> None:
    first = world.replica()
    turn = Turns(ROOM, world.clock)
    opening = items(turn.opening("s1", "wave_hand"))
    world.holding = False  # the lease expired while the batch was being applied
    await first.cycle(opening)
    assert world.livekit.delivered == []
    assert world.rooms.saved == {}
    assert all(i.settled == [] for i in opening)  # unacked: the next owner gets them
    world.holding = True
    successor = world.replica()
    await successor.resume()
    await successor.cycle([i.again() for i in opening])
    assert world.livekit.actions(ROOM) == ["speaking"]


async def test_a_failed_write_leaves_the_batch_unacked_and_writes_it_again(world: World) -> None:
    engine = world.replica()
    turn = Turns(ROOM, world.clock)
    opening = items(turn.opening("s1"))
    await engine.cycle(opening)
    world.rooms.fail = True
    with pytest.raises(TimeoutError):
        await engine.settle()
    assert all(i.settled == [] for i in opening)
    world.rooms.fail = False
    await engine.cycle([])
    await engine.settle()
    assert (0, ROOM) in world.rooms.saved
    assert world.livekit.actions(ROOM) == ["speaking"]


async def test_under_overload_late_packets_are_dropped_as_stale(world: World) -> None:
    engine = world.replica(max_lag=2.0)
    turn = Turns(ROOM, world.clock)
    opening = turn.opening("s1", "wave_hand")
    closing = turn.closing("s1")
    world.clock.now += 5  # the events waited 5 s in the stream before their turn
    await engine.cycle(items(opening))
    await world.run(engine, 0.5)
    await engine.cycle(items(closing))
    await world.run(engine, 1.0)
    await engine.settle()
    assert world.livekit.delivered == []
    assert world.decisions.of(ROOM) == [
        ("speaking", "dropped", "stale"),
        ("wave_hand", "dropped", "stale"),
    ]


async def test_speaking_for_a_speech_already_done_is_stale(world: World) -> None:
    engine = world.replica()
    turn = Turns(ROOM, world.clock)
    # Its start and end arrive together (a backlog): speaking now would come after it.
    await engine.cycle(items(turn.opening("s1", "nod") + turn.closing("s1")))
    await world.run(engine, 1.0)
    assert world.livekit.actions(ROOM) == ["nod"]
    await engine.settle()
    assert ("speaking", "dropped", "stale") in world.decisions.of(ROOM)


async def test_a_room_waiting_for_livekit_long_keeps_a_bounded_outbox(world: World) -> None:
    engine = world.replica(max_lag=10**6)
    world.livekit.down = True
    turn = Turns(ROOM, world.clock)
    for n in range(MAX_OUTBOX + 10):
        await engine.cycle(items(turn.opening(f"s{n}")))
        await engine.cycle(items(turn.closing(f"s{n}")))
    assert engine.waiting() == MAX_OUTBOX
    await engine.settle()
    stale = [d for d in world.decisions.of(ROOM) if d[2] == "stale"]
    assert len(stale) == 10


async def test_an_ended_room_leaves_memory_once_saved(world: World) -> None:
    engine = world.replica()
    turn = Turns(ROOM, world.clock)
    await engine.cycle(items(turn.opening("s1", "nod")))
    assert engine.rooms_in_memory() == 1
    ended = SessionEnded(room=ROOM, seq=99, reason="user_left")
    await engine.cycle([Item(ended)])
    await engine.settle()
    assert engine.rooms_in_memory() == 0
    assert ("nod", "dropped", "session_ended") in world.decisions.of(ROOM)
    await engine.cycle(items(turn.opening("s2")))  # late events find the ended state
    assert world.livekit.actions(ROOM) == ["speaking"]


async def test_the_next_session_in_an_ended_room_is_served(world: World) -> None:
    """A room the caller names may hold one session after another, in the state's life."""
    engine = world.replica()
    turn = Turns(ROOM, world.clock)
    await engine.cycle(items(turn.opening("s1")))
    await engine.cycle([Item(SessionEnded(room=ROOM, seq=99, reason="user_left"))])
    await engine.settle()
    assert engine.rooms_in_memory() == 0
    world.clock.now += 60
    started = SessionStarted(room=ROOM, seq=0, agent_name="avatar-agent")
    await engine.cycle([Item(started), *items(turn.opening("s2", "nod"))])
    world.clock.now += 2
    await engine.cycle(items(turn.closing("s2")))
    await world.run(engine, 1.0)
    assert world.livekit.actions(ROOM) == ["speaking", "speaking", "nod"]


async def test_idle_rooms_beyond_the_cap_leave_memory(world: World) -> None:
    engine = world.replica(max_rooms=10)
    for n in range(50):
        turn = Turns(f"room-{n}", world.clock)
        await engine.cycle(items(turn.opening("s1") + turn.closing("s1")))
    await world.run(engine, 1.0)
    assert engine.rooms_in_memory() <= 10


async def test_batches_are_written_while_the_next_ones_are_applied_within_a_bound(
    world: World,
) -> None:
    engine = world.replica()
    writes: list[asyncio.Future[None]] = []

    async def slow_save(partition: int, room: str, stored: object) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        writes.append(done)
        await done

    world.rooms.save = slow_save  # type: ignore[method-assign]
    batches = [items(Turns(f"room-{n}", world.clock).opening("s1")) for n in range(3)]
    for batch in batches:
        await engine.cycle(batch)
    assert len(world.livekit.delivered) == 3  # sent without waiting for earlier writes
    assert all(i.settled == [] for batch in batches for i in batch)
    async with asyncio.timeout(5):
        while len(writes) < 3:  # the writes start as the loop runs them
            await asyncio.sleep(0)
    for done in writes:
        done.set_result(None)
    await engine.settle()
    assert all(i.settled == ["ack"] for batch in batches for i in batch)
    # Past MAX_BATCHES_IN_FLIGHT, a cycle waits for the oldest batch's writes.
    writes.clear()

    async def busy() -> None:
        for n in range(MAX_BATCHES_IN_FLIGHT + 2):
            await engine.cycle(items(Turns(f"busy-{n}", world.clock).opening("s1")))

    running = asyncio.create_task(busy())
    async with asyncio.timeout(5):
        while len(writes) < MAX_BATCHES_IN_FLIGHT + 1:
            await asyncio.sleep(0)
    await asyncio.sleep(0.05)
    assert not running.done()  # waiting for the oldest batch's writes
    assert len(writes) == MAX_BATCHES_IN_FLIGHT + 1
    writes[0].set_result(None)
    async with asyncio.timeout(5):
        while len(writes) < MAX_BATCHES_IN_FLIGHT + 2:
            await asyncio.sleep(0)
    for done in writes:
        if not done.done():
            done.set_result(None)
    await running
    await engine.settle()


async def test_packets_handed_to_the_bus_take_the_rooms_event_numbers(world: World) -> None:
    """Delivery through the agent puts each packet on the bus as an event: the engine
    numbers it in the room's sequence, between its decisions."""
    world.livekit.announces = True
    engine = world.replica()
    turn = Turns(ROOM, world.clock)
    await engine.cycle(items(turn.opening("s1", "wave_hand")))
    world.clock.now += 1
    await engine.cycle(items(turn.closing("s1")))
    await world.run(engine, 1.0)
    packets = [p.seq for p in world.livekit.delivered]
    decisions = [d.seq for d in world.decisions.stored.values()]
    assert sorted(packets + decisions) == list(range(len(packets) + len(decisions)))
    assert len(packets) == 2
    assert all(p.cause_id and p.speech_id == "s1" for p in world.livekit.delivered)


async def test_packets_sent_outside_the_bus_leave_the_event_numbers_alone(world: World) -> None:
    engine = world.replica()
    turn = Turns(ROOM, world.clock)
    await engine.cycle(items(turn.opening("s1", "wave_hand")))
    world.clock.now += 1
    await engine.cycle(items(turn.closing("s1")))
    await world.run(engine, 1.0)
    decisions = sorted(d.seq for d in world.decisions.stored.values())
    assert decisions == list(range(len(decisions)))
    assert {p.seq for p in world.livekit.delivered} == {0}


class CountingRooms(MemoryRooms):
    """Counts the reads, and those in flight at once; fails the reads of ``unreadable``."""

    def __init__(self) -> None:
        super().__init__()
        self.reading = self.most_at_once = 0
        self.reads: list[str] = []
        self.unreadable: set[str] = set()

    async def load(self, partition: int, room: str) -> StoredRoom:
        self.reads.append(room)
        if room in self.unreadable:
            raise TimeoutError("room store unavailable")
        self.reading += 1
        self.most_at_once = max(self.most_at_once, self.reading)
        await asyncio.sleep(0)
        self.reading -= 1
        return await super().load(partition, room)


async def test_taking_a_partition_keeps_in_memory_only_the_rooms_with_something_due() -> None:
    world = World(rooms=CountingRooms())
    first = world.replica()
    for r in range(60):  # the day's finished conversations, their state still stored
        turn = Turns(f"quiet-{r}", world.clock)
        await first.cycle(items(turn.opening("s1")))
        await first.cycle(items(turn.closing("s1")))
    await world.run(first, 5.0)
    busy = Turns(ROOM, world.clock)
    await first.cycle(items(busy.opening("s1", "wave_hand")))  # held until the speech ends
    await first.settle()
    successor = world.replica()
    await successor.resume()
    assert successor.rooms_in_memory() == 1
    assert successor.held() == 1
    assert 1 < world.rooms.most_at_once <= RESUME_READERS
    await successor.cycle(items(busy.closing("s1")))
    await world.run(successor, 1.0)
    assert world.livekit.actions(ROOM) == ["speaking", "wave_hand"]
    await successor.cycle(items(Turns("quiet-7", world.clock).opening("s2")))  # read again
    assert world.livekit.actions("quiet-7") == ["speaking", "speaking"]


async def test_a_batchs_rooms_not_in_memory_are_read_at_once_and_each_once() -> None:
    world = World(rooms=CountingRooms())
    engine = world.replica()
    names = [f"new-{r}" for r in range(8)]
    batch = [item for name in names for item in items(Turns(name, world.clock).opening("s1"))]
    await engine.cycle(batch)  # two events per room
    assert sorted(world.rooms.reads) == sorted(names)
    assert world.rooms.most_at_once == len(names)
    assert all(world.livekit.actions(name) == ["speaking"] for name in names)


async def test_a_room_that_cannot_be_read_fails_only_from_its_own_event_on() -> None:
    world = World(rooms=CountingRooms())
    engine = world.replica()
    world.rooms.unreadable = {"unreadable"}
    first = items(Turns("readable", world.clock).opening("s1"))
    second = items(Turns("unreadable", world.clock).opening("s1"))
    await engine.cycle(first + second)
    assert world.livekit.actions("readable") == ["speaking"]
    assert world.livekit.actions("unreadable") == []
    assert all(i.settled == ["nak"] for i in second)  # redelivered, in order
    world.rooms.unreadable = set()
    await engine.cycle([i.again() for i in second])
    assert world.livekit.actions("unreadable") == ["speaking"]


async def test_events_the_rules_do_not_read_cost_no_state_read_or_write() -> None:
    world = World(rooms=CountingRooms())
    engine = world.replica()
    batch = items(
        [DeliveryDone(room=ROOM, seq=1, delivery_id="a" * 32, outcome=DeliveryOutcome.SENT)]
    )
    await engine.cycle(batch)
    await engine.settle()
    assert world.rooms.reads == []
    assert world.rooms.saved == {}
    assert all(i.settled == ["ack"] for i in batch)
    assert engine.rooms_in_memory() == 0


async def test_a_long_batch_lets_other_tasks_run_while_it_is_applied(world: World) -> None:
    """Applying events to rooms in memory never waits: a long batch must yield."""
    seen: list[str] = []

    class Recording(EventProcessor):
        async def process(self, *args: Any, **kwargs: Any) -> Processed:
            seen.append("event")
            return await super().process(*args, **kwargs)

    async def other_task() -> None:
        while True:
            seen.append("other")
            await asyncio.sleep(0)

    engine = Engine(
        0,
        RULES,
        rooms=world.rooms,
        publisher=world.livekit,
        decisions=world.decisions,
        processor=Recording(),
        clock=world.clock,
    )
    batch = [i for r in range(30) for i in items(Turns(f"room-{r}", world.clock).opening("s1"))]
    await engine.cycle(batch[:1])  # the other task starts between batches
    other = asyncio.create_task(other_task())
    seen.clear()
    await engine.cycle(batch[1:])
    other.cancel()
    applying = "".join("e" if s == "event" else "o" for s in seen)
    applying = applying[: applying.rindex("e") + 1]  # up to the last event applied
    assert max(len(run) for run in applying.split("o")) <= YIELD_EVERY
