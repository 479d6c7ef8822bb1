"""Delivery through the agent (``ACTIONS_DELIVERY=agent``) on real NATS: the actions
service hands packets to the room's agent, whose job publishes them from its participant.

The agent side is the real :class:`~avatar_agent.delivery.RoomDeliveries` with the real
event outbox; only ``publish_data`` (the LiveKit participant) is recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from avatar_actions.bootstrap import ActionsService, bootstrap
from avatar_actions.config import ActionsSettings
from avatar_actions.delivery import AgentDeliveryPublisher
from avatar_actions.ports import Packet, packet_nonce
from avatar_agent.delivery import RoomDeliveries, publish_from
from avatar_agent.outbox import EventOutbox
from avatar_shared import semconv
from avatar_shared.bus import Bus
from avatar_shared.config import DeliverySettings
from avatar_shared.events import AvatarDelivery, decode_event
from tests.integration.actions.test_engine import (  # noqa: F401  (fixtures)
    Turns,
    cleanup,
    publish,
    settings,
)
from tests.integration.conftest import metric_points
from tests.support.nats_server import NatsServer

TOPIC = "avatar"
AGENT_MODE = DeliverySettings(delivery="agent")


def reference(action: str) -> bytes:
    """What the reference agent publishes (``json.dumps`` of the same dict)."""
    return json.dumps({"type": "AVATAR_UPDATE", "action": action}).encode()


class Participant:
    """Records ``publish_data`` calls as the LiveKit participant would receive them."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()
        self.block: asyncio.Event | None = None  # set: the next call hangs until it is set

    async def publish_data(
        self,
        payload: bytes | str,
        *,
        reliable: bool = True,
        destination_identities: Sequence[str] = (),
        topic: str = "",
    ) -> None:
        self.calls.append(
            {
                "payload": payload,
                "reliable": reliable,
                "topic": topic,
                "destinations": list(destination_identities),
            }
        )
        self.arrived.set()
        if self.block is not None:
            block, self.block = self.block, None
            await block.wait()

    def actions(self) -> list[str]:
        return [json.loads(call["payload"])["action"] for call in self.calls]

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(15):
            while len(self.calls) < count:
                self.arrived.clear()
                await self.arrived.wait()


class Agent:
    """One agent job in one room: its outbox and its deliveries, on its own connection."""

    def __init__(self, bus: Bus, room: str, job: str, tracer: TracerProvider | None) -> None:
        self.participant = Participant()
        self.outbox = EventOutbox(bus, room=room, avatar_id="demo-avatar", max_queue=100)
        self._bus = bus
        self.deliveries = self._deliveries(room, job, tracer)

    def _deliveries(self, room: str, job: str, tracer: TracerProvider | None) -> RoomDeliveries:
        bus = self._bus

        class Source:
            async def get(self) -> Bus:
                return bus

        return RoomDeliveries(
            Source(),
            room=room,
            job=job,
            publish_data=publish_from(self.participant),  # type: ignore[arg-type]
            outbox=self.outbox,
            ack_wait=timedelta(seconds=1),
            tracer_provider=tracer,
        )

    async def start(self) -> None:
        self.outbox.start()
        self.deliveries.start()
        async with asyncio.timeout(10):
            await self.deliveries.ready.wait()

    async def stop(self) -> None:
        await self.deliveries.aclose()
        await self.outbox.aclose(2.0)


@pytest.fixture
def agent_settings(settings: ActionsSettings) -> ActionsSettings:  # noqa: F811
    return settings.model_copy(update={"topic": TOPIC, "delivery_ack_grace_seconds": 0.5})


@pytest.fixture
async def start_actions(
    nats_server: NatsServer,
    agent_settings: ActionsSettings,
    cleanup: None,  # noqa: F811
    tracer_provider: TracerProvider,
    meter_provider: MeterProvider,
) -> AsyncIterator[Callable[[], Any]]:
    running: list[tuple[ActionsService, asyncio.Task[None], asyncio.Event]] = []

    async def launch() -> tuple[ActionsService, Callable[[], Any]]:
        service = await bootstrap(
            agent_settings,
            nats_server.settings("actions"),
            None,  # no LiveKit: the agent publishes
            delivery=AGENT_MODE,
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
        )
        stop = asyncio.Event()
        task = asyncio.create_task(service.run(stop))
        running.append((service, task, stop))
        async with asyncio.timeout(15):
            while len(service.ownership.owned) < agent_settings.partitions:
                await asyncio.sleep(0.02)

        async def crash() -> None:
            """Dies at once: nothing of the batch in hand is written or acked."""
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await service.close()
            running.remove((service, task, stop))

        return service, crash

    yield launch
    for service, task, stop in list(running):
        stop.set()
        if not task.done():
            await task
        await service.close()


@pytest.fixture
async def agents(
    nats_server: NatsServer, tracer_provider: TracerProvider
) -> AsyncIterator[Callable[[str], Any]]:
    """Agent jobs, each on a connection with the agent's NATS identity."""
    started: list[tuple[Agent, Bus]] = []

    async def join(room: str, job: str = "job-1") -> Agent:
        bus = await Bus.connect(
            nats_server.settings("agent"),
            name=f"agent:{job}",
            identity="agent",
            tracer_provider=tracer_provider,
        )
        agent = Agent(bus, room, job, tracer_provider)
        await agent.start()
        started.append((agent, bus))
        return agent

    yield join
    for agent, bus in started:
        await agent.stop()
        await bus.close()


async def reply(bus: Bus, agent: Agent, turns: Turns, speech: str, *gestures: str) -> None:
    """One reply played as the agent plays it: the speaking packet arrives before the
    reply ends, its gestures after."""
    events = turns.reply(speech, *gestures)
    before = len(agent.participant.calls)
    for event in events[:-2]:
        await publish(bus, event)
    await agent.participant.wait_for(before + 1)
    for event in events[-2:]:
        await publish(bus, event)
    await agent.participant.wait_for(before + 1 + len(gestures))


def _append(into: list[bytes]) -> Callable[[bytes], Any]:
    async def append(data: bytes) -> None:
        into.append(data)

    return append


async def test_packets_reach_each_room_through_its_agent_in_order_once_each(
    bus: Bus,
    start_actions: Callable[[], Any],
    agents: Callable[..., Any],
    room: str,
    metric_reader: InMemoryMetricReader,
) -> None:
    await start_actions()
    rooms = [f"{room}-{name}" for name in ("a", "b", "c")]
    joined = {name: await agents(name) for name in rooms}
    turns = {name: Turns(name) for name in rooms}
    for name in rooms:
        await reply(bus, joined[name], turns[name], "s1", "wave_hand", "nod")
    for name in rooms:
        await reply(bus, joined[name], turns[name], "s2", "nod")
    for name in rooms:
        calls = joined[name].participant.calls
        assert [call["payload"] for call in calls] == [
            reference(action) for action in ("speaking", "wave_hand", "nod", "speaking", "nod")
        ]
        assert all(call["reliable"] is True and call["topic"] == TOPIC for call in calls)
    await asyncio.sleep(0.5)  # nothing else may follow
    assert all(len(joined[name].participant.calls) == 5 for name in rooms)
    async with asyncio.timeout(10):  # every delivery answered, and counted by the replica
        while metric_points(metric_reader, semconv.METRIC_ACTIONS_AGENT_DELIVERIES) != {
            ((semconv.OUTCOME, "sent"),): 15
        }:
            await asyncio.sleep(0.05)


async def test_restarted_actions_replica_and_agent_consumer_send_nothing_twice(
    bus: Bus, start_actions: Callable[[], Any], agents: Callable[..., Any], room: str
) -> None:
    _, crash = await start_actions()
    agent = await agents(room)
    turns = Turns(room)
    events = turns.reply("s1", "wave_hand", "nod")
    for event in events[:-2]:
        await publish(bus, event)
    await agent.participant.wait_for(1)
    # The replica dies as the agent has the packet: its successor redoes the batch and
    # hands the same delivery over again, which the bus stores once.
    await crash()
    await agent.deliveries.aclose()  # and the agent's consumer restarts
    agent.deliveries.start()
    await start_actions()
    for event in events[-2:]:
        await publish(bus, event)
    await agent.participant.wait_for(3)
    await reply(bus, agent, turns, "s2", "wave_hand")
    await asyncio.sleep(0.5)
    assert agent.participant.actions() == ["speaking", "wave_hand", "nod", "speaking", "wave_hand"]


async def test_a_publish_cut_short_is_not_published_again_on_redelivery(
    bus: Bus, start_actions: Callable[[], Any], agents: Callable[..., Any], room: str
) -> None:
    await start_actions()
    agent = await agents(room)
    hang = asyncio.Event()
    agent.participant.block = hang
    turns = Turns(room)
    for event in turns.reply("s1", "wave_hand")[:-2]:
        await publish(bus, event)
    await agent.participant.wait_for(1)  # publish_data was called and never returns
    await agent.deliveries.aclose()  # the consumer restarts with the delivery unacked
    agent.deliveries.start()
    await asyncio.sleep(2.0)  # past the ack wait (1 s here): the delivery comes again
    hang.set()
    assert agent.participant.actions() == ["speaking"]


async def test_a_late_delivery_is_not_published_and_is_answered_stale(
    bus: Bus, agents: Callable[..., Any], room: str
) -> None:
    agent = await agents(room)
    late = delivery(room, "wave_hand", 0).model_copy(
        update={"deadline": datetime.now(UTC) - timedelta(seconds=1)}
    )
    on_time = late.model_copy(
        update={"id": uuid.uuid4().hex, "seq": 1, "deadline": datetime.now(UTC) + timedelta(1)}
    )
    seen: list[bytes] = []
    unsubscribe = await bus.subscribe("avatars.v1.agent.delivery_done.>", _append(seen))
    await bus.publish(late)
    await bus.publish(on_time)
    await agent.participant.wait_for(1)
    async with asyncio.timeout(5):
        while len(seen) < 2:
            await asyncio.sleep(0.02)
    await unsubscribe()
    outcomes = [(e.delivery_id, e.outcome.value) for e in map(decode_event, seen)]  # type: ignore[union-attr]
    assert outcomes == [(late.id, "stale"), (on_time.id, "sent")]
    assert len(agent.participant.calls) == 1


async def test_a_room_without_its_agent_is_counted_and_bounded(
    bus: Bus,
    start_actions: Callable[[], Any],
    room: str,
    metric_reader: InMemoryMetricReader,
    agent_settings: ActionsSettings,
) -> None:
    service, _ = await start_actions()
    for event in Turns(room).reply("s1", "wave_hand")[:-2]:
        await publish(bus, event)
    # No agent answers: after the packet's deadline (ACTIONS_MAX_LAG_SECONDS) and the
    # grace, the replica counts it and forgets it.
    bound = agent_settings.max_lag_seconds + agent_settings.delivery_ack_grace_seconds + 3
    async with asyncio.timeout(bound):
        while metric_points(metric_reader, semconv.METRIC_ACTIONS_AGENT_DELIVERIES) != {
            ((semconv.OUTCOME, "unacknowledged"),): 1
        }:
            await asyncio.sleep(0.1)
    assert service.deliveries is not None
    assert service.deliveries.pending == 0


async def test_agent_publish_to_publish_data_is_one_trace(
    bus: Bus,
    start_actions: Callable[[], Any],
    agents: Callable[..., Any],
    room: str,
    spans: InMemorySpanExporter,
) -> None:
    await start_actions()
    agent = await agents(room)
    await reply(bus, agent, Turns(room), "s1", "wave_hand")
    async with asyncio.timeout(5):
        while sum(s.name == "publish_data" for s in spans.get_finished_spans()) < 2:
            await asyncio.sleep(0.02)
    finished = spans.get_finished_spans()
    by_id = {s.context.span_id: s for s in finished}
    for sent in (s for s in finished if s.name == "publish_data"):
        chain = [sent.name]
        span = sent
        while span.parent is not None and span.parent.span_id in by_id:
            span = by_id[span.parent.span_id]
            chain.append(span.name)
        assert span.name.startswith("avatars.v1.agent."), chain  # the agent's own publish
        assert "avatars.v1.actions.avatar_delivery.{room} publish" in chain
        assert "avatars.v1.actions.avatar_delivery.{room} process" in chain
        assert span.context.trace_id == sent.context.trace_id
        assert dict(sent.attributes or {})[semconv.OUTCOME] == "sent"


def delivery(room: str, action: str, seq: int) -> AvatarDelivery:
    return AvatarDelivery(
        id=uuid.uuid4().hex,
        room=room,
        seq=seq,
        action=action,
        payload=reference(action).decode(),
        deadline=datetime.now(UTC) + timedelta(minutes=1),
        cause_id="cause",
    )


async def test_a_packet_handed_over_twice_reaches_the_room_once(
    bus: Bus, agents: Callable[..., Any], room: str
) -> None:
    """Two replicas (a crashed one and its successor redoing its batch) hand over the
    same packet: the bus stores it once, so the agent publishes it once."""
    agent = await agents(room)
    nonce = packet_nonce(room, "cause", "wave_hand")
    packet = Packet(room, "wave_hand", nonce, time.time() + 60, cause_id="cause")
    for _ in range(2):
        replica = AgentDeliveryPublisher(bus)
        await replica.publish(packet)
    await agent.participant.wait_for(1)
    await asyncio.sleep(0.5)
    assert agent.participant.actions() == ["wave_hand"]


async def test_order_holds_across_a_consumer_restart_mid_publish(
    bus: Bus, agents: Callable[..., Any], room: str
) -> None:
    agent = await agents(room)
    agent.participant.block = asyncio.Event()
    await bus.publish(delivery(room, "speaking", 0))
    await agent.participant.wait_for(1)  # the first publish hangs
    for seq, action in enumerate(("wave_hand", "nod"), start=1):
        await bus.publish(delivery(room, action, seq))
    await asyncio.sleep(0.3)  # nothing may overtake the first, even once restarted
    await agent.deliveries.aclose()
    agent.deliveries.start()
    await agent.participant.wait_for(3)
    assert agent.participant.actions() == ["speaking", "wave_hand", "nod"]
