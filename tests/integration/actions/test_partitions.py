"""Rooms partitioned across replicas: leases, rebalancing, and order through handovers."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from nats.js import JetStreamContext

from avatar_actions.ownership import Ownership, assignment
from avatar_actions.partitions import PartitionMismatch, WorkStream, event_subject
from avatar_shared import subjects
from avatar_shared.bus import Bucket, Bus
from avatar_shared.events import PlayoutStarted, SpeechDone

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def leases(bus: Bus) -> AsyncIterator[Bucket]:
    bucket = f"leases_{uuid.uuid4().hex[:8]}"
    yield await bus.ensure_kv(bucket, ttl_seconds=1.0)
    await bus.delete_kv(bucket)


class Tracker:
    """What a replica's workers would be doing: the partitions it consumes right now."""

    def __init__(self) -> None:
        self.consuming: set[int] = set()

    async def acquired(self, partition: int) -> None:
        assert partition not in self.consuming
        self.consuming.add(partition)

    async def released(self, partition: int) -> None:
        self.consuming.remove(partition)


async def heartbeat(*replicas: tuple[Ownership, Tracker], rounds: int = 1) -> None:
    for _ in range(rounds):
        for ownership, tracker in replicas:
            await ownership.step(tracker.acquired, tracker.released)
            await ownership.handed_back()


@pytest.mark.parametrize("members", [["a", "b"], ["a", "b", "c"], ["x", "y", "z", "w"]])
@pytest.mark.parametrize("partitions", [2, 4, 16, 17])
def test_every_member_gets_its_share(members: list[str], partitions: int) -> None:
    owners = assignment(partitions, members)
    assert set(owners) == set(range(partitions))
    cap = -(-partitions // len(members))
    counts = [list(owners.values()).count(m) for m in members]
    assert max(counts) <= cap
    assert min(counts) >= partitions // len(members) - (cap * len(members) - partitions)


def test_a_new_member_moves_few_partitions() -> None:
    before = assignment(64, ["a", "b"])
    after = assignment(64, ["a", "b", "c"])
    moved = [p for p in range(64) if before[p] != after[p]]
    assert 16 <= sum(after[p] == "c" for p in range(64)) <= 22  # about its share
    assert len(moved) <= 32  # far from reshuffling all 64


async def test_replicas_split_the_partitions_without_overlap(leases: Bucket) -> None:
    a = (Ownership(leases, "a", 16, ttl=1.0), Tracker())
    b = (Ownership(leases, "b", 16, ttl=1.0), Tracker())
    await heartbeat(a)
    assert a[1].consuming == set(range(16))  # alone, it takes everything
    await heartbeat(b, a, b, rounds=2)  # b joins: a hands over, then b claims
    assert a[1].consuming.isdisjoint(b[1].consuming)
    assert a[1].consuming | b[1].consuming == set(range(16))
    assert b[1].consuming == {p for p, m in assignment(16, ["a", "b"]).items() if m == "b"}
    assert len(b[1].consuming) == 8


async def test_a_dead_replicas_partitions_move_after_the_lease_ttl(leases: Bucket) -> None:
    a = (Ownership(leases, "a", 8, ttl=1.0), Tracker())
    b = (Ownership(leases, "b", 8, ttl=1.0), Tracker())
    await heartbeat(a, b, a, b, rounds=2)
    assert a[1].consuming
    assert b[1].consuming
    orphaned = set(b[1].consuming)
    await heartbeat(a)  # b is dead: no more heartbeats; its leases still hold
    assert a[1].consuming.isdisjoint(orphaned)
    await asyncio.sleep(1.0)  # the bucket forgets b's member key and leases after 1 s
    async with asyncio.timeout(5):  # (the server purges expired keys on its own schedule)
        while a[1].consuming != set(range(8)):
            await heartbeat(a)
            await asyncio.sleep(0.1)


async def test_a_lease_not_refreshed_in_time_stops_consumption(leases: Bucket) -> None:
    now = [0.0]
    a = Ownership(leases, "a", 2, ttl=1.0, clock=lambda: now[0])
    tracker = Tracker()
    await a.step(tracker.acquired, tracker.released)
    assert a.holds(0)
    assert a.holds(1)
    now[0] = 0.8  # past ttl - heartbeat: the server may soon give it to someone else
    assert not a.holds(0)


async def test_graceful_stop_hands_everything_back_at_once(leases: Bucket) -> None:
    a = (Ownership(leases, "a", 4, ttl=1.0), Tracker())
    await heartbeat(a)
    await a[0].release_all(a[1].released)
    assert a[1].consuming == set()
    b = (Ownership(leases, "b", 4, ttl=1.0), Tracker())
    await heartbeat(b)  # no waiting for a TTL
    assert b[1].consuming == set(range(4))


async def test_the_work_stream_partitions_each_room_consistently(
    bus: Bus, js: JetStreamContext, room: str
) -> None:
    stream = WorkStream(4, name=f"WORK_{uuid.uuid4().hex[:8]}")
    await stream.ensure(bus)
    await stream.ensure(bus)  # idempotent
    events = [PlayoutStarted(room=f"{room}-{i}", speech_id="s", seq=0) for i in range(12)] + [
        SpeechDone(room=f"{room}-{i}", speech_id="s", seq=1, interrupted=False) for i in range(12)
    ]
    for event in events:
        await bus.publish(event)
    sub = await js.pull_subscribe("actions.work.>", stream=stream.name)
    seen: dict[str, set[str]] = {}
    count = 0
    async with asyncio.timeout(10):
        while count < len(events):
            for msg in await sub.fetch(50, timeout=5):
                count += 1
                partition = msg.subject.split(".")[2]
                parts = subjects.parse_subject(event_subject(msg.subject))
                seen.setdefault(parts.room, set()).add(partition)
                await msg.ack_sync()
    assert all(len(partitions) == 1 for partitions in seen.values())  # one room, one partition
    assert len({p for partitions in seen.values() for p in partitions}) > 1  # rooms spread
    info = await js.stream_info(stream.name)
    assert info.state.messages == 0  # work queue: acked is gone; decisions never came in
    await bus.delete_stream(stream.name)


async def test_another_partition_count_refuses_to_start(bus: Bus) -> None:
    name = f"WORK_{uuid.uuid4().hex[:8]}"
    await WorkStream(4, name=name).ensure(bus)
    with pytest.raises(PartitionMismatch, match="ACTIONS_PARTITIONS must match"):
        await WorkStream(8, name=name).ensure(bus)
    await bus.delete_stream(name)


async def test_a_partition_slow_to_stop_does_not_starve_the_other_leases(
    leases: Bucket,
) -> None:
    """While one worker takes its time to finish (LiveKit retrying, say), the heartbeat
    keeps every lease, the one being handed back included, refreshed."""
    stopping = asyncio.Event()

    class Slow(Tracker):
        async def released(self, partition: int) -> None:
            await stopping.wait()
            await super().released(partition)

    a = (Ownership(leases, "a", 4, ttl=1.0), Slow())
    await heartbeat(a)
    b = (Ownership(leases, "b", 4, ttl=1.0), Tracker())
    await b[0].step(b[1].acquired, b[1].released)  # b joins: a must hand two over
    for _ in range(8):  # 2 s of heartbeats (ttl 1 s) while a's workers take their time
        await a[0].step(a[1].acquired, a[1].released)
        await asyncio.sleep(0.25)
    assert a[0].owned == [0, 1, 2, 3]  # all still held and refreshed: none expired
    stopping.set()
    await a[0].handed_back()
    await heartbeat(b, a, b, rounds=2)
    assert a[1].consuming | b[1].consuming == set(range(4))
    assert a[1].consuming.isdisjoint(b[1].consuming)


class SlowLeases:
    """The lease bucket behind a slow round trip (a saturated replica or server): records
    the calls, and how many updates were in flight at once."""

    def __init__(self, bucket: Bucket, delay: float = 0.05) -> None:
        self._bucket = bucket
        self._delay = delay
        self.calls: list[str] = []
        self.updating = self.most_updating = 0

    async def put(self, key: str, value: bytes) -> int:
        self.calls.append("put")
        await asyncio.sleep(self._delay)
        return await self._bucket.put(key, value)

    async def create(self, key: str, value: bytes) -> int | None:
        return await self._bucket.create(key, value)

    async def update(self, key: str, value: bytes, *, last: int) -> int | None:
        self.calls.append("update")
        self.updating += 1
        self.most_updating = max(self.most_updating, self.updating)
        await asyncio.sleep(self._delay)
        self.updating -= 1
        return await self._bucket.update(key, value, last=last)

    async def delete(self, key: str, *, last: int | None = None) -> bool:
        return await self._bucket.delete(key, last=last)

    async def keys(self, pattern: str) -> list[str]:
        self.calls.append("keys")
        return await self._bucket.keys(pattern)


async def test_a_heartbeat_refreshes_every_lease_in_one_round_trip_first(leases: Bucket) -> None:
    slow = SlowLeases(leases)
    a = (Ownership(slow, "a", 8, ttl=1.0), Tracker())
    await heartbeat(a)
    assert a[0].owned == list(range(8))
    slow.calls.clear()
    await heartbeat(a)
    assert slow.most_updating == 8  # all at once, not one after the other
    assert slow.calls[:9].count("update") == 8  # before membership is read
    assert "keys" in slow.calls[9:]
    assert a[0].owned == list(range(8))


async def test_a_partition_handed_back_during_a_refresh_stays_handed_back(
    leases: Bucket,
) -> None:
    slow = SlowLeases(leases, delay=0.1)
    a = (Ownership(slow, "a", 4, ttl=1.0), Tracker())
    await heartbeat(a)
    b = (Ownership(leases, "b", 4, ttl=1.0), Tracker())
    await b[0].step(b[1].acquired, b[1].released)  # b joins: a hands two over
    await a[0].step(a[1].acquired, a[1].released)  # starts handing back
    await a[0].step(a[1].acquired, a[1].released)  # refreshes while they are released
    await a[0].handed_back()
    assert set(a[0].owned) == a[1].consuming
    assert len(a[1].consuming) == 2


class FlakyLeases(SlowLeases):
    """One lease's refresh fails once (NATS did not answer in time)."""

    def __init__(self, bucket: Bucket) -> None:
        super().__init__(bucket, delay=0.0)
        self.failing: str | None = None

    async def update(self, key: str, value: bytes, *, last: int) -> int | None:
        if key == self.failing:
            self.failing = None
            raise TimeoutError
        return await super().update(key, value, last=last)


async def test_one_failed_refresh_keeps_the_other_leases_refreshed(leases: Bucket) -> None:
    flaky = FlakyLeases(leases)
    a = (Ownership(flaky, "a", 4, ttl=1.0), Tracker())
    await heartbeat(a)
    flaky.failing = "partition.1"
    with pytest.raises(TimeoutError):  # the heartbeat failed: run() logs it and retries
        await a[0].step(a[1].acquired, a[1].released)
    await heartbeat(a)  # the others were refreshed: their new revisions were kept
    assert a[0].owned == [0, 1, 2, 3]
    assert a[1].consuming == {0, 1, 2, 3}


async def test_members_not_read_in_time_leave_the_refreshed_leases_as_they_are(
    leases: Bucket,
) -> None:
    slow = SlowLeases(leases, delay=0.0)
    a = (Ownership(slow, "a", 4, ttl=1.0), Tracker())
    await heartbeat(a)

    async def stuck(pattern: str) -> list[str]:  # longer than half a heartbeat
        await asyncio.sleep(1.0)
        return []

    slow.keys = stuck  # type: ignore[method-assign]
    async with asyncio.timeout(0.5):
        await a[0].step(a[1].acquired, a[1].released)  # returns after heartbeat / 2
    assert slow.calls.count("update") == 4  # the leases were refreshed first
    assert a[0].owned == [0, 1, 2, 3]  # and nothing was handed back for want of members
    assert a[1].consuming == {0, 1, 2, 3}


async def test_heartbeats_keep_their_cadence_when_one_takes_long(leases: Bucket) -> None:
    began: list[float] = []

    class Slow(Ownership):
        async def step(self, acquired: Any, released: Any) -> None:
            began.append(time.monotonic())
            await asyncio.sleep(0.15)  # most of a heartbeat (0.25 s)

    stop = asyncio.Event()
    running = asyncio.create_task(
        Slow(leases, "a", 4, ttl=1.0).run(stop, Tracker().acquired, Tracker().released)
    )
    await asyncio.sleep(1.1)
    stop.set()
    await running
    gaps = [b - a for a, b in itertools.pairwise(began)]
    assert len(gaps) >= 2
    assert max(gaps) < 0.36  # every heartbeat from the last one's start (0.25 s), not 0.4 s
