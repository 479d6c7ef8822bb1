"""The actions service's engine and consumer on real NATS, sending to the LiveKit double."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import nats.errors
import nats.js.errors
import pytest
from nats.js import JetStreamContext
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from avatar_actions.bootstrap import ActionsService, bootstrap
from avatar_actions.config import ActionsSettings
from avatar_actions.ownership import Ownership
from avatar_shared.bus import Bus
from avatar_shared.config import LiveKitSettings
from avatar_shared.events import (
    AgentState,
    AgentStateChanged,
    Event,
    PlayoutStarted,
    SessionEnded,
    SessionStarted,
    SpeechCreated,
    SpeechDone,
    TagKind,
    TagParsed,
    utc_now,
)
from avatar_shared.rooms import encode_room
from tests.integration.conftest import metric_points
from tests.support.livekit_server import LiveKitDouble, running_livekit
from tests.support.nats_server import NatsServer

KEY, SECRET = "APIactions", "actions-test-secret-that-is-long-enough-0123456789"
SETTINGS = ActionsSettings(
    allowed_actions=["speaking", "wave_hand", "nod"],
    debounce_seconds=0.05,
    min_gap_seconds=0.05,
    # Handovers after a crash wait out the lease (2 s here): these tests are about
    # losing nothing through them, so packets may be that late (staleness is tested apart).
    max_lag_seconds=10.0,
    send_timeout_seconds=1.0,
)


class Turns:
    """Agent events for one room, numbered as the agent would number them."""

    def __init__(self, room: str) -> None:
        self.room = room
        self._seq = itertools.count()

    def _common(self) -> dict[str, Any]:
        return {"room": self.room, "avatar_id": "demo-avatar", "seq": next(self._seq)}

    def reply(self, speech: str, *gestures: str, interrupted: bool = False) -> list[Event]:
        """A whole reply: :data:`OPENING` events up to its playout, then 2 closing ones."""
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


Replica = tuple[Ownership, asyncio.Task[None], asyncio.Event]


@pytest.fixture
async def livekit() -> AsyncIterator[LiveKitDouble]:
    async with running_livekit(LiveKitDouble(keys={KEY: SECRET})) as double:
        yield double


@pytest.fixture
def settings() -> ActionsSettings:
    """The service's own stream and bucket names (its NATS identity may use only those:
    ``avatar_shared.bus.identities``), emptied before and after each test; consumers of
    its own."""
    return SETTINGS.model_copy(
        update={
            "consumer": f"actions-{uuid.uuid4().hex[:8]}",
            "lease_ttl_seconds": 2.0,
            "partitions": 4,
        }
    )


async def _remove_streams(bus: Bus, settings: ActionsSettings) -> None:
    for bucket in (settings.state_bucket, settings.lease_bucket):
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await bus.delete_kv(bucket)
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await bus.delete_stream(settings.work_stream)


@pytest.fixture
async def cleanup(bus: Bus, settings: ActionsSettings) -> AsyncIterator[None]:
    """The service's streams and buckets start absent and are removed afterwards."""
    await _remove_streams(bus, settings)
    yield
    await _remove_streams(bus, settings)


@pytest.fixture
async def start(
    nats_server: NatsServer,
    livekit: LiveKitDouble,
    settings: ActionsSettings,
    cleanup: None,
    tracer_provider: TracerProvider,
    meter_provider: MeterProvider,
) -> AsyncIterator[Callable[..., Any]]:
    """Start a replica through the service's own bootstrap; each call is a fresh
    process's worth of memory and connection."""
    running: list[tuple[ActionsService, asyncio.Task[None], asyncio.Event]] = []

    async def launch(*, owning: int | None = None) -> Replica:
        """Returns once the replica owns ``owning`` partitions (default: all of them)."""
        service = await bootstrap(
            settings,
            nats_server.settings("actions"),
            LiveKitSettings(url=livekit.url, api_key=KEY, api_secret=SECRET),
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
        )
        stop = asyncio.Event()
        task = asyncio.create_task(service.run(stop))
        running.append((service, task, stop))
        want = settings.partitions if owning is None else owning
        async with asyncio.timeout(15):  # readiness: it consumes its partitions
            while len(service.ownership.owned) < want:
                await asyncio.sleep(0.02)
        return service.ownership, task, stop

    yield launch
    for service, task, stop in running:
        stop.set()
        if not task.done():
            await task
        await service.close()


async def publish(bus: Bus, event: Event) -> None:
    """Publish as the agent would: the event happens now (its ``ts``), whenever the test
    built it; packets later than ACTIONS_MAX_LAG_SECONDS after it would be stale."""
    await bus.publish(event.model_copy(update={"ts": utc_now()}))


#: Events of a reply up to its playout (so ``reply(...)[:-2]`` opens, ``[-2:]`` closes).
CLOSING = 2


async def talk(bus: Bus, livekit: LiveKitDouble, *replies: list[Event]) -> None:
    """Play replies as an agent does: each one's audio plays (its speaking packet goes
    out) before it ends; a reply ended before its speaking was sent drops it as stale."""
    before = {reply[0].room: in_room(_packets(livekit), reply[0].room) for reply in replies}
    for reply in replies:
        for event in reply[:-CLOSING]:
            await publish(bus, event)
    for reply in replies:
        room = reply[0].room
        async with asyncio.timeout(20):
            while in_room(_packets(livekit), room).count("speaking") <= before[room].count(
                "speaking"
            ):
                livekit.arrived.clear()
                await livekit.arrived.wait()
        for event in reply[-CLOSING:]:
            await publish(bus, event)


def _packets(livekit: LiveKitDouble) -> list[tuple[str, str]]:
    return [(r.request.room, json.loads(r.request.data)["action"]) for r in livekit.received]


async def received(livekit: LiveKitDouble, count: int) -> list[tuple[str, str]]:
    async with asyncio.timeout(15):
        while len(livekit.received) < count:
            livekit.arrived.clear()
            await livekit.arrived.wait()
    return _packets(livekit)


def in_room(packets: list[tuple[str, str]], room: str) -> list[str]:
    return [action for r, action in packets if r == room]


async def test_a_scripted_stream_for_several_rooms_yields_exactly_the_expected_packets(
    bus: Bus, livekit: LiveKitDouble, start: Callable[..., Any], room: str
) -> None:
    await start()
    rooms = {name: Turns(f"{room}-{name}") for name in ("a", "b", "c")}
    await talk(
        bus,
        livekit,
        rooms["a"].reply("a1", "wave_hand"),
        rooms["b"].reply("b1", "nod", "wave_hand", "moonwalk"),
        rooms["c"].reply("c1", "wave_hand", interrupted=True),
    )
    packets = await received(livekit, 2 + 3 + 1)
    assert in_room(packets, rooms["a"].room) == ["speaking", "wave_hand"]
    assert in_room(packets, rooms["b"].room) == ["speaking", "nod", "wave_hand"]
    assert in_room(packets, rooms["c"].room) == ["speaking"]
    await asyncio.sleep(0.3)  # nothing else may follow (an absence cannot be waited for)
    assert len(livekit.received) == 6


async def test_a_room_the_caller_named_is_served_again_in_its_next_session(
    bus: Bus, livekit: LiveKitDouble, start: Callable[..., Any], room: str
) -> None:
    """A room may hold one session after another (``custom_rooms``); the ended state of
    the first must not silence the second, nor the first's late events speak in it."""
    await start()
    first, second = Turns(room), Turns(room)
    await talk(bus, livekit, first.reply("first-1", "nod"))
    await received(livekit, 2)
    await publish(bus, SessionEnded(room=room, seq=99, reason="user_left"))
    await publish(bus, SessionStarted(room=room, seq=0, agent_name="avatar-agent"))
    await publish(bus, first.reply("first-1", "wave_hand")[3])  # a late playout of the first
    await talk(bus, livekit, second.reply("second-1", "wave_hand"))
    assert in_room(await received(livekit, 4), room) == ["speaking", "nod", "speaking", "wave_hand"]
    await asyncio.sleep(0.3)
    assert len(livekit.received) == 4


async def test_one_turn_is_one_trace_from_agent_publish_to_send_data(
    bus: Bus,
    livekit: LiveKitDouble,
    start: Callable[..., Any],
    room: str,
    spans: InMemorySpanExporter,
) -> None:
    await start()
    await talk(bus, livekit, Turns(room).reply("s1", "wave_hand"))
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


async def test_every_decision_drops_included_joins_the_trace_of_what_caused_it(
    bus: Bus,
    livekit: LiveKitDouble,
    start: Callable[..., Any],
    room: str,
    spans: InMemorySpanExporter,
) -> None:
    await start()
    await talk(bus, livekit, Turns(room).reply("s1", "wave_hand", "moonwalk"))
    await received(livekit, 2)

    def decision_spans() -> list[ReadableSpan]:
        return [s for s in spans.get_finished_spans() if "action_decision" in s.name]

    async with asyncio.timeout(10):  # speaking, wave_hand published; moonwalk dropped
        while len(decision_spans()) < 3:
            await asyncio.sleep(0.05)
    by_id = {s.context.span_id: s for s in spans.get_finished_spans()}
    outcomes = set()
    for decision in decision_spans():
        assert decision.attributes is not None
        outcomes.add((decision.attributes["avatar.action"], decision.attributes["avatar.outcome"]))
        root = decision
        while root.parent is not None and root.parent.span_id in by_id:
            root = by_id[root.parent.span_id]
        assert root is not decision, f"{decision.name} starts a trace of its own"
        assert root.name.startswith("avatars.v1.agent."), root.name  # the agent's event
        assert root.context.trace_id == decision.context.trace_id
    assert ("moonwalk", "dropped") in outcomes
    assert ("wave_hand", "published") in outcomes


async def test_a_replica_that_dies_mid_stream_loses_nothing_and_repeats_nothing(
    bus: Bus, livekit: LiveKitDouble, start: Callable[..., Any], room: str
) -> None:
    _, first, _ = await start()
    turn = Turns(room).reply("s1", "wave_hand", "nod")
    for event in turn[:-2]:  # up to playout: speaking goes out, gestures are held
        await publish(bus, event)
    await received(livekit, 1)
    first.cancel()  # a crash as soon as LiveKit has the packet: nothing written or acked
    with pytest.raises(asyncio.CancelledError):
        await first
    await start()  # a successor: empty memory, the same consumer (recreated) and stores
    for event in turn[-2:]:
        await publish(bus, event)
    packets = await received(livekit, 3)
    assert in_room(packets, room) == ["speaking", "wave_hand", "nod"]
    await asyncio.sleep(0.3)
    assert len(livekit.received) == 3
    # The successor got the unacked batch again (same messages) and sent its packet again,
    # with the same nonce: the double dropped it as livekit-server would.
    resent = [d.request for d in livekit.duplicates]
    assert [r.nonce for r in resent] in ([], [livekit.received[0].request.nonce])


async def test_livekit_answering_too_late_delivers_each_packet_once(
    bus: Bus, livekit: LiveKitDouble, start: Callable[..., Any], room: str
) -> None:
    livekit.stall_after_accepting = 1.5  # past ACTIONS_SEND_TIMEOUT_SECONDS (1 s here)
    await start()
    await talk(bus, livekit, Turns(room).reply("s1", "wave_hand"))
    livekit.stall_after_accepting = 0.0
    packets = await received(livekit, 2)
    assert in_room(packets, room) == ["speaking", "wave_hand"]
    async with asyncio.timeout(10):  # the retry of the timed-out call reaches the double
        while not livekit.duplicates:
            await asyncio.sleep(0.05)
    assert livekit.duplicates[0].request.nonce == livekit.received[0].request.nonce


async def test_an_agent_repeating_its_events_gets_no_second_packets(
    bus: Bus, livekit: LiveKitDouble, start: Callable[..., Any], room: str
) -> None:
    await start()
    turn = Turns(room).reply("s1", "wave_hand")
    await talk(bus, livekit, turn)
    await received(livekit, 2)
    # The same events again under new ids (a replaying producer; a redelivery of the
    # same messages is the crash test above): the speech is finished, nothing follows.
    for event in turn:
        await publish(bus, event.model_copy(update={"id": uuid.uuid4().hex}))
    await asyncio.sleep(0.5)
    assert len(livekit.received) == 2


async def test_livekit_failing_for_a_while_delays_packets_but_loses_none(
    bus: Bus, livekit: LiveKitDouble, start: Callable[..., Any], room: str
) -> None:
    livekit.fail_with = [503] * 6  # more than one call's retries: the packet waits
    await start()
    await talk(bus, livekit, Turns(room).reply("s1", "wave_hand"))
    packets = await received(livekit, 2)
    assert in_room(packets, room) == ["speaking", "wave_hand"]


async def test_a_livekit_4xx_drops_the_packet_and_says_why(
    bus: Bus,
    js: JetStreamContext,
    livekit: LiveKitDouble,
    start: Callable[..., Any],
    room: str,
    metric_reader: InMemoryMetricReader,
) -> None:
    livekit.fail_with = [400]
    await start()
    decisions = await js.pull_subscribe(
        f"avatars.v1.actions.action_decision.{encode_room(room)}", stream="AVATAR_EVENTS"
    )
    reply = Turns(room).reply("s1", "wave_hand")
    for event in reply[:-CLOSING]:
        await publish(bus, event)
    got: list[dict[str, Any]] = []
    async with asyncio.timeout(10):  # the speaking packet refused: a decision says so
        while not got:
            got += [json.loads(m.data) for m in await decisions.fetch(1, timeout=5)]
    for event in reply[-CLOSING:]:
        await publish(bus, event)
    packets = await received(livekit, 1)
    assert in_room(packets, room) == ["wave_hand"]
    async with asyncio.timeout(10):
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
    stuck_reply = stuck.reply("s1", "wave_hand")
    for event in stuck_reply[:-CLOSING]:
        await publish(bus, event)
    await talk(bus, livekit, free.reply("f1", "nod"))
    packets = await received(livekit, 2)
    assert in_room(packets, free.room) == ["speaking", "nod"]
    livekit.unavailable_rooms.clear()  # back within the lag bound: sent late, in order
    await talk(bus, livekit, stuck_reply)
    packets = await received(livekit, 4)
    assert in_room(packets, stuck.room) == ["speaking", "wave_hand"]


async def test_nats_restarting_mid_stream_loses_nothing_acked(
    bus: Bus, livekit: LiveKitDouble, start: Callable[..., Any], room: str, nats_server: Any
) -> None:
    await start()
    turn = Turns(room).reply("s1", "wave_hand")
    for event in turn[:-2]:
        await publish(bus, event)
    await received(livekit, 1)
    await asyncio.to_thread(nats_server.restart)
    for event in turn[-2:]:
        async with asyncio.timeout(30):
            while True:
                try:
                    await publish(bus, event)  # same id on every try: stored once
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
        await talk(bus, livekit, *(turn.reply(f"s{n}", "wave_hand") for turn in turns))

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
        await publish(bus, event)
    await received(livekit, 1)
    async with asyncio.timeout(5):
        while metric_points(metric_reader, "avatar.actions.held") != {(): 2}:
            await asyncio.sleep(0.05)
    livekit.unavailable_rooms.add(room)  # LiveKit refuses: released gestures wait
    for event in turn[-2:]:
        await publish(bus, event)
    async with asyncio.timeout(5):
        while metric_points(metric_reader, "avatar.actions.waiting") != {(): 2}:
            await asyncio.sleep(0.05)
    assert metric_points(metric_reader, "avatar.actions.held") == {(): 0}
    livekit.unavailable_rooms.clear()
    await received(livekit, 3)


async def test_the_leases_keep_a_connection_of_their_own(
    nats_server: NatsServer, livekit: LiveKitDouble, settings: ActionsSettings, cleanup: None
) -> None:
    """Behind a backlog of acks, writes and decisions on the data connection a lease
    refresh waited seconds (the leases expired in an overload run): the heartbeat must
    not depend on that connection."""
    service = await bootstrap(
        settings,
        nats_server.settings("actions"),
        LiveKitSettings(url=livekit.url, api_key=KEY, api_secret=SECRET),
    )

    async def nothing(_: int) -> None:
        return None

    try:
        await service.ownership.step(nothing, nothing)
        assert service.ownership.owned == list(range(settings.partitions))
        await service.bus.close(drain=False)  # the data connection is of no use now
        await service.ownership.step(nothing, nothing)  # refreshed all the same
        assert service.ownership.owned == list(range(settings.partitions))
    finally:
        await service.close()
