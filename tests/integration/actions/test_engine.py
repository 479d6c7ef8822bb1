"""The actions service's engine and consumer on real NATS, sending to the LiveKit double."""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import nats.errors
import pytest
from livekit import api
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from avatar_actions.app import Stores, build_publisher, consume, engine_factory, ownership
from avatar_actions.config import ActionsSettings
from avatar_actions.ownership import Ownership
from avatar_actions.partitions import WorkStream
from avatar_actions.store import RoomStore, SentRecord
from avatar_shared.bus import Bus
from avatar_shared.events import (
    AgentState,
    AgentStateChanged,
    Event,
    PlayoutStarted,
    SpeechCreated,
    SpeechDone,
    TagKind,
    TagParsed,
)
from avatar_shared.rooms import encode_room
from tests.integration.conftest import metric_points
from tests.support.livekit_server import LiveKitDouble, running_livekit

KEY, SECRET = "APIactions", "actions-test-secret-that-is-long-enough-0123456789"
SETTINGS = ActionsSettings(
    allowed_actions=["speaking", "wave_hand", "nod"],
    debounce_seconds=0.05,
    min_gap_seconds=0.05,
)


class Turns:
    """Agent events for one room, numbered as the agent would number them."""

    def __init__(self, room: str) -> None:
        self.room = room
        self._seq = itertools.count()

    def _common(self) -> dict[str, Any]:
        return {"room": self.room, "avatar_id": "demo-avatar", "seq": next(self._seq)}

    def reply(self, speech: str, *gestures: str, interrupted: bool = False) -> list[Event]:
        tags = [
            TagParsed(
                **self._common(),
                speech_id=speech,
                kind=TagKind.ACTION,
                name=g,
                valid=True,
                index=i,
                char_offset=0,
                word_index=0,
            )
            for i, g in enumerate(gestures)
        ]
        return [
            SpeechCreated(
                **self._common(),
                speech_id=speech,
                source_kind="generate_reply",
                user_initiated=False,
            ),
            AgentStateChanged(
                **self._common(), old_state=AgentState.THINKING, new_state=AgentState.SPEAKING
            ),
            *tags,
            PlayoutStarted(**self._common(), speech_id=speech),
            SpeechDone(**self._common(), speech_id=speech, interrupted=interrupted),
            AgentStateChanged(
                **self._common(), old_state=AgentState.SPEAKING, new_state=AgentState.LISTENING
            ),
        ]


@pytest.fixture
async def livekit() -> AsyncIterator[LiveKitDouble]:
    async with running_livekit(LiveKitDouble(keys={KEY: SECRET})) as double:
        yield double


@pytest.fixture
def settings() -> ActionsSettings:
    """Names of its own for each test: its work stream, consumers and lease bucket."""
    tag = uuid.uuid4().hex[:8]
    return SETTINGS.model_copy(
        update={
            "consumer": f"actions-{tag}",
            "work_stream": f"WORK_{tag}",
            "lease_bucket": f"leases_{tag}",
            "lease_ttl_seconds": 2.0,
            "partitions": 4,
        }
    )


@pytest.fixture
async def stores(bus: Bus, settings: ActionsSettings) -> AsyncIterator[Stores]:
    tag = settings.work_stream
    await WorkStream(settings.partitions, name=settings.work_stream).ensure(bus)
    stores = Stores(
        RoomStore(await bus.ensure_kv(f"rooms_{tag}", ttl_seconds=600)),
        SentRecord(await bus.ensure_kv(f"sent_{tag}", ttl_seconds=600)),
        await bus.ensure_kv(settings.lease_bucket, ttl_seconds=settings.lease_ttl_seconds),
    )
    yield stores
    for bucket in (f"rooms_{tag}", f"sent_{tag}", settings.lease_bucket):
        await bus.js.delete_key_value(bucket)
    await bus.js.delete_stream(settings.work_stream)


Replica = tuple[Ownership, asyncio.Task[None], asyncio.Event]


@pytest.fixture
async def start(
    bus: Bus,
    livekit: LiveKitDouble,
    settings: ActionsSettings,
    stores: Stores,
    tracer_provider: TracerProvider,
    meter_provider: MeterProvider,
) -> AsyncIterator[Callable[..., Any]]:
    """Start a replica; each call is a fresh process's worth of memory."""
    running: list[tuple[asyncio.Task[None], asyncio.Event, api.LiveKitAPI]] = []

    async def launch(*, owning: int | None = None) -> Replica:
        """Returns once the replica owns ``owning`` partitions (default: all of them)."""
        lk = api.LiveKitAPI(livekit.url, KEY, SECRET)
        publisher = build_publisher(SETTINGS, lk.room, tracer_provider=tracer_provider)
        engines = engine_factory(
            settings,
            bus,
            stores,
            publisher,
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
        )
        owner = ownership(settings, stores)
        stop = asyncio.Event()
        task = asyncio.create_task(consume(settings, bus, owner, engines, stop))
        running.append((task, stop, lk))
        want = settings.partitions if owning is None else owning
        async with asyncio.timeout(15):  # readiness: it consumes its partitions
            while len(owner.owned) < want:
                await asyncio.sleep(0.02)
        return owner, task, stop

    yield launch
    for task, stop, lk in running:
        stop.set()
        if not task.done():
            await task
        await lk.aclose()


async def received(livekit: LiveKitDouble, count: int) -> list[tuple[str, str]]:
    async with asyncio.timeout(15):
        while len(livekit.received) < count:
            livekit.arrived.clear()
            await livekit.arrived.wait()
    return [(r.request.room, json.loads(r.request.data)["action"]) for r in livekit.received]


def in_room(packets: list[tuple[str, str]], room: str) -> list[str]:
    return [action for r, action in packets if r == room]


async def test_a_scripted_stream_for_several_rooms_yields_exactly_the_expected_packets(
    bus: Bus, livekit: LiveKitDouble, start: Callable[..., Any], room: str
) -> None:
    await start()
    rooms = {name: Turns(f"{room}-{name}") for name in ("a", "b", "c")}
    script = [
        *rooms["a"].reply("a1", "wave_hand"),
        *rooms["b"].reply("b1", "nod", "wave_hand", "moonwalk"),
        *rooms["c"].reply("c1", "wave_hand", interrupted=True),
    ]
    for event in script:
        await bus.publish(event)
    packets = await received(livekit, 2 + 3 + 1)
    assert in_room(packets, rooms["a"].room) == ["speaking", "wave_hand"]
    assert in_room(packets, rooms["b"].room) == ["speaking", "nod", "wave_hand"]
    assert in_room(packets, rooms["c"].room) == ["speaking"]
    await asyncio.sleep(0.3)  # nothing else may follow (an absence cannot be waited for)
    assert len(livekit.received) == 6


async def test_one_turn_is_one_trace_from_agent_publish_to_send_data(
    bus: Bus,
    livekit: LiveKitDouble,
    start: Callable[..., Any],
    room: str,
    spans: InMemorySpanExporter,
) -> None:
    await start()
    for event in Turns(room).reply("s1", "wave_hand"):
        await bus.publish(event)
    await received(livekit, 2)
    async with asyncio.timeout(5):  # the client span ends just after the double answers
        while sum(s.name == "livekit.RoomService/SendData" for s in spans.get_finished_spans()) < 2:
            await asyncio.sleep(0.01)
    finished = spans.get_finished_spans()
    by_id = {s.context.span_id: s for s in finished}
    sends = [s for s in finished if s.name == "livekit.RoomService/SendData"]
    assert len(sends) == 2
    for send in sends:
        chain = []
        span = send
        while span.parent is not None and span.parent.span_id in by_id:
            span = by_id[span.parent.span_id]
            chain.append(span.name)
        assert span.kind.name == "PRODUCER", chain  # the trace starts at the agent's publish
        assert span.name.endswith(" publish")
        assert any(name.endswith(" process") for name in chain)
        assert span.context.trace_id == send.context.trace_id


async def test_a_replica_that_dies_mid_stream_loses_nothing_and_repeats_nothing(
    bus: Bus, livekit: LiveKitDouble, start: Callable[..., Any], room: str, stores: Stores
) -> None:
    _, first, _ = await start()
    turn = Turns(room).reply("s1", "wave_hand", "nod")
    for event in turn[:-2]:  # up to playout: speaking goes out, gestures are held
        await bus.publish(event)
    await received(livekit, 1)
    # Killed once the packet is recorded: between LiveKit taking a packet and its record,
    # a crash cannot know whether it was delivered (docs/actions.md).
    async with asyncio.timeout(5):
        while not await stores.sent.was_sent(room, turn[-3].id, "speaking"):
            await asyncio.sleep(0.005)
    first.cancel()  # a crash: no drain, nothing more acked
    with pytest.raises(asyncio.CancelledError):
        await first
    await start()  # a successor with empty memory, same durable consumer and stores
    for event in turn[-2:]:
        await bus.publish(event)
    packets = await received(livekit, 3)
    assert in_room(packets, room) == ["speaking", "wave_hand", "nod"]
    await asyncio.sleep(0.3)
    assert len(livekit.received) == 3


async def test_redelivered_events_send_nothing_twice(
    bus: Bus, livekit: LiveKitDouble, start: Callable[..., Any], room: str
) -> None:
    await start()
    turn = Turns(room).reply("s1", "wave_hand")
    for event in turn:
        await bus.publish(event)
    await received(livekit, 2)
    # The same events again, as a redelivery would bring them (the stream de-duplicates
    # identical ids, so these arrive as new messages with the same content and new ids).
    for event in turn:
        await bus.publish(event.model_copy(update={"id": uuid.uuid4().hex}))
    await asyncio.sleep(0.5)
    assert len(livekit.received) == 2


async def test_livekit_failing_for_a_while_delays_packets_but_loses_none(
    bus: Bus, livekit: LiveKitDouble, start: Callable[..., Any], room: str
) -> None:
    livekit.fail_with = [503] * 6  # more than one call's retries: the event is redelivered
    await start()
    for event in Turns(room).reply("s1", "wave_hand"):
        await bus.publish(event)
    packets = await received(livekit, 2)
    assert in_room(packets, room) == ["speaking", "wave_hand"]


async def test_a_livekit_4xx_drops_the_packet_and_says_why(
    bus: Bus,
    livekit: LiveKitDouble,
    start: Callable[..., Any],
    room: str,
    metric_reader: InMemoryMetricReader,
) -> None:
    livekit.fail_with = [400]
    await start()
    decisions = await bus.js.pull_subscribe(
        f"avatars.v1.actions.action_decision.{encode_room(room)}", stream="AVATAR_EVENTS"
    )
    for event in Turns(room).reply("s1", "wave_hand"):
        await bus.publish(event)
    packets = await received(livekit, 1)
    assert in_room(packets, room) == ["wave_hand"]
    async with asyncio.timeout(10):
        got: list[dict[str, Any]] = []
        while len(got) < 2:
            got += [json.loads(m.data) for m in await decisions.fetch(2, timeout=5)]
    assert [(d["action"], d["outcome"], d["reason"]) for d in got] == [
        ("speaking", "dropped", "send_failed"),
        ("wave_hand", "published", None),
    ]
    assert livekit.attempts == 2  # the 4xx was not retried
    counted = metric_points(metric_reader, "avatar.actions.decisions")
    assert counted == {
        (("avatar.outcome", "dropped"), ("avatar.reason", "send_failed")): 1,
        (("avatar.outcome", "published"), ("avatar.reason", "")): 1,
    }


async def test_a_room_waiting_for_livekit_does_not_hold_up_the_others(
    bus: Bus, livekit: LiveKitDouble, start: Callable[..., Any], room: str
) -> None:
    stuck, free = Turns(f"{room}-stuck"), Turns(f"{room}-free")
    livekit.unavailable_rooms.add(stuck.room)
    await start()
    for event in [*stuck.reply("s1", "wave_hand"), *free.reply("f1", "nod")]:
        await bus.publish(event)
    packets = await received(livekit, 2)
    assert in_room(packets, free.room) == ["speaking", "nod"]
    livekit.unavailable_rooms.clear()
    packets = await received(livekit, 4)
    assert in_room(packets, stuck.room) == ["speaking", "wave_hand"]  # late, in order


async def test_nats_restarting_mid_stream_loses_nothing_acked(
    bus: Bus, livekit: LiveKitDouble, start: Callable[..., Any], room: str, nats_server: Any
) -> None:
    await start()
    turn = Turns(room).reply("s1", "wave_hand")
    for event in turn[:-2]:
        await bus.publish(event)
    await received(livekit, 1)
    await asyncio.to_thread(nats_server.restart)
    for event in turn[-2:]:
        async with asyncio.timeout(30):
            while True:
                try:
                    await bus.publish(event)  # same id on every try: stored once
                    break
                except (nats.errors.Error, TimeoutError):
                    await asyncio.sleep(0.1)
    packets = await received(livekit, 2)
    assert in_room(packets, room) == ["speaking", "wave_hand"]


async def test_replicas_share_the_rooms_and_handovers_keep_order(
    bus: Bus, livekit: LiveKitDouble, start: Callable[..., Any], room: str
) -> None:
    turns = [Turns(f"{room}-{i}") for i in range(8)]

    async def reply(n: int) -> None:
        for turn in turns:
            for event in turn.reply(f"s{n}", "wave_hand"):
                await bus.publish(event)

    first, first_task, _ = await start()
    await reply(1)
    await received(livekit, 16)
    second, _, _ = await start(owning=1)  # scale up: partitions move to the newcomer
    async with asyncio.timeout(10):
        while len(first.owned) + len(second.owned) != 4:
            await asyncio.sleep(0.02)
    assert set(first.owned).isdisjoint(second.owned)
    await reply(2)
    await received(livekit, 32)
    await asyncio.sleep(0.3)  # the last batch is recorded and acked
    first_task.cancel()  # scale down by a crash: the survivor takes over after the TTL
    with pytest.raises(asyncio.CancelledError):
        await first_task
    await reply(3)
    async with asyncio.timeout(15):
        while len(second.owned) < 4:
            await asyncio.sleep(0.05)
    packets = await received(livekit, 48)
    for turn in turns:
        assert in_room(packets, turn.room) == ["speaking", "wave_hand"] * 3
    await asyncio.sleep(0.3)
    assert len(livekit.received) == 48


async def test_held_gestures_and_waiting_packets_are_gauges(
    bus: Bus,
    livekit: LiveKitDouble,
    start: Callable[..., Any],
    room: str,
    metric_reader: InMemoryMetricReader,
) -> None:
    await start()
    turn = Turns(room).reply("s1", "wave_hand", "nod")
    for event in turn[:-2]:  # playout started: speaking sent, two gestures held
        await bus.publish(event)
    await received(livekit, 1)
    async with asyncio.timeout(5):
        while metric_points(metric_reader, "avatar.actions.held") != {(): 2}:
            await asyncio.sleep(0.05)
    livekit.unavailable_rooms.add(room)  # LiveKit refuses: released gestures wait
    for event in turn[-2:]:
        await bus.publish(event)
    async with asyncio.timeout(5):
        while metric_points(metric_reader, "avatar.actions.waiting") != {(): 2}:
            await asyncio.sleep(0.05)
    assert metric_points(metric_reader, "avatar.actions.held") == {(): 0}
    livekit.unavailable_rooms.clear()
    await received(livekit, 3)
