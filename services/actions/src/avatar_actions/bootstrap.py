"""The composition root: :func:`bootstrap` wires the adapters into the engine, once.

``__main__``, the integration tests and the benchmark all start the service through
it, so there is one wiring: NATS (the bus, its streams, buckets and feeds), LiveKit
(or a dry run) or the room's agent (``ACTIONS_DELIVERY=agent``), the leases (on a NATS
connection of their own, so the heartbeat never queues behind the data), and an
:class:`~avatar_actions.engine.Engine` per partition this replica acquires.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiohttp
import httpx
from fastapi import APIRouter, FastAPI
from opentelemetry import metrics, trace

from avatar_actions import worker
from avatar_actions.config import ActionsSettings
from avatar_actions.delivery import AgentDeliveryPublisher
from avatar_actions.engine import Engine, room_cap
from avatar_actions.ownership import Ownership, replica_id
from avatar_actions.partitions import PartitionFeed, WorkStream
from avatar_actions.ports import Publisher
from avatar_actions.publisher import SEND_CONCURRENCY, DryRunPublisher, LiveKitPublisher
from avatar_actions.rules import RulesConfig
from avatar_actions.store import KvRoomStore
from avatar_shared import semconv
from avatar_shared.bus import Bus, events_stream
from avatar_shared.config import DeliverySettings, LiveKitSettings, NatsSettings
from avatar_shared.web.service import Cors, build_app

VERSION = "0.1.0"


def rules_config(settings: ActionsSettings) -> RulesConfig:
    return RulesConfig(
        allowed=frozenset(settings.allowed_actions),
        debounce=settings.debounce_seconds,
        ttl=settings.gesture_ttl_seconds,
        cap_per_speech=settings.cap_per_speech,
        min_gap=settings.min_gap_seconds,
    )


@dataclass
class ActionsService:
    """A bootstrapped replica: :meth:`run` consumes until ``stop``; :meth:`close` after."""

    settings: ActionsSettings
    bus: Bus
    control: Bus  # the leases' own connection
    ownership: Ownership
    http: aiohttp.ClientSession | None  # LiveKit's server API
    deliveries: AgentDeliveryPublisher | None  # delivery through the agent
    start_partition: worker.PartitionStarter
    engines: weakref.WeakSet[Engine]

    async def run(self, stop: asyncio.Event) -> None:
        await worker.run(self.ownership, self.start_partition, stop)

    async def close(self) -> None:
        if self.deliveries is not None:
            await self.deliveries.aclose()
        await self.bus.close()
        await self.control.close()
        if self.http is not None:
            await self.http.close()

    def health_app(
        self, ready: Callable[[], str | None], routers: Sequence[APIRouter] = ()
    ) -> FastAPI:
        """``/readyz`` answers 503 with ``ready()``'s reason while it returns one;
        ``routers``: the inspector's, when it is on."""
        return build_app(
            title="avatar-backend actions service",
            description="Health, readiness and metrics of the actions service.",
            version=VERSION,
            routers=routers,
            http=httpx.AsyncClient(),
            cors=Cors(origins=[], methods=[], headers=[]),
            ready=ready,
            metrics_route=True,
        )


async def bootstrap(
    settings: ActionsSettings,
    nats: NatsSettings,
    livekit: LiveKitSettings | None,
    *,
    delivery: DeliverySettings | None = None,
    me: str | None = None,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
) -> ActionsService:
    """Connect, provision what the service uses (idempotent), and wire a replica."""

    async def connect(name: str) -> Bus:
        return await Bus.connect(
            nats,
            name=name,
            identity="actions",
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
        )

    bus = await connect("avatar-actions")
    try:
        replicas = nats.stream_replicas
        await bus.ensure_stream(events_stream(replicas))
        await WorkStream(
            settings.partitions,
            name=settings.work_stream,
            replicas=replicas,
            max_age_seconds=settings.work_max_age_seconds,
        ).ensure(bus)
        rooms = KvRoomStore(
            await bus.ensure_kv(
                settings.state_bucket, ttl_seconds=settings.state_ttl_seconds, replicas=replicas
            )
        )
    except BaseException:
        await bus.close(drain=False)
        raise
    # The leases get a connection of their own: behind a backlog of acks, writes and
    # decisions on the main one, a lease refresh waited seconds and the leases expired.
    control = await connect("avatar-actions-leases")
    try:
        leases = await control.ensure_kv(
            settings.lease_bucket, ttl_seconds=settings.lease_ttl_seconds, replicas=replicas
        )
    except BaseException:
        await control.close(drain=False)
        await bus.close(drain=False)
        raise
    session: aiohttp.ClientSession | None = None
    deliveries: AgentDeliveryPublisher | None = None
    publisher: Publisher
    if delivery is not None and delivery.delivery == "agent":
        publisher = deliveries = AgentDeliveryPublisher(
            bus,
            topic=settings.topic,
            destinations=settings.destinations,
            timeout=settings.send_timeout_seconds,
            ack_grace=settings.delivery_ack_grace_seconds,
            meter_provider=meter_provider,
        )
        await deliveries.start()
    elif livekit is not None:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=SEND_CONCURRENCY))
        publisher = LiveKitPublisher(
            livekit.url,
            livekit.api_key,
            livekit.api_secret.get_secret_value(),
            session,
            topic=settings.topic,
            destinations=settings.destinations,
            timeout=settings.send_timeout_seconds,
            retries=settings.send_retries,
            # shed a packet for a slow LiveKit in at most the last tenth of its lag budget
            max_transit=settings.max_lag_seconds / 10,
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
        )
    else:
        publisher = DryRunPublisher(tracer_provider=tracer_provider)
    ownership = Ownership(
        leases, me or replica_id(), settings.partitions, ttl=settings.lease_ttl_seconds
    )
    rules = rules_config(settings)
    engines: weakref.WeakSet[Engine] = weakref.WeakSet()
    _gauges(engines, meter_provider)

    async def start_partition(partition: int, stop: asyncio.Event) -> asyncio.Task[None]:
        feed = PartitionFeed(
            bus, settings.work_stream, settings.consumer, partition, batch=settings.batch_size
        )
        engine = Engine(
            partition,
            rules,
            rooms=rooms,
            publisher=publisher,
            decisions=bus,
            processor=bus.processor,
            consumer=f"{settings.consumer}-p{partition}",
            holds=lambda: ownership.holds(partition),
            max_rooms=room_cap(settings.max_rooms, settings.partitions),
            max_lag=settings.max_lag_seconds,
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
        )
        engines.add(engine)
        return asyncio.create_task(
            worker.consume_partition(engine, feed, lambda: ownership.holds(partition), stop),
            name=f"partition-{partition}",
        )

    return ActionsService(
        settings, bus, control, ownership, session, deliveries, start_partition, engines
    )


def _gauges(engines: weakref.WeakSet[Engine], meter_provider: metrics.MeterProvider | None) -> None:
    """The replica's held gestures, waiting packets and rooms in memory, over its engines."""
    meter = metrics.get_meter("avatar_actions", meter_provider=meter_provider)

    def gauge(count: Callable[[Engine], int]) -> Callable[..., list[metrics.Observation]]:
        return lambda _: [metrics.Observation(sum(count(e) for e in list(engines)))]

    meter.create_observable_gauge(
        semconv.METRIC_ACTIONS_HELD,
        callbacks=[gauge(Engine.held)],
        description="Gestures held for release in this replica's rooms",
    )
    meter.create_observable_gauge(
        semconv.METRIC_ACTIONS_WAITING,
        callbacks=[gauge(Engine.waiting)],
        description="Packets waiting for LiveKit in this replica's rooms",
    )
    meter.create_observable_gauge(
        semconv.METRIC_ACTIONS_ROOMS,
        callbacks=[gauge(Engine.rooms_in_memory)],
        description="Rooms this replica keeps in memory",
    )
