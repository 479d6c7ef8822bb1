"""Composition root: settings and adapters in; the engine and its health app out."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx
from fastapi import FastAPI
from nats.js.kv import KeyValue
from opentelemetry import metrics, trace

from avatar_actions import consumer
from avatar_actions.config import ActionsSettings
from avatar_actions.consumer import EngineFactory
from avatar_actions.engine import Engine
from avatar_actions.ownership import Ownership, replica_id
from avatar_actions.partitions import WorkStream
from avatar_actions.publisher import DryRunPublisher, LiveKitPublisher, Publisher
from avatar_actions.rules import RulesConfig
from avatar_actions.store import SENT_BUCKET, STATE_BUCKET, RoomStore, SentRecord
from avatar_shared import semconv
from avatar_shared.bus import Bus, events_stream
from avatar_shared.web.service import Cors, build_app

if TYPE_CHECKING:
    from livekit.api.room_service import RoomService

VERSION = "0.1.0"


def rules_config(settings: ActionsSettings) -> RulesConfig:
    return RulesConfig(
        allowed=frozenset(settings.allowed_actions),
        debounce=settings.debounce_seconds,
        ttl=settings.gesture_ttl_seconds,
        cap_per_speech=settings.cap_per_speech,
        min_gap=settings.min_gap_seconds,
    )


def build_publisher(
    settings: ActionsSettings,
    room_service: RoomService | None,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
) -> Publisher:
    if room_service is None:
        return DryRunPublisher()
    return LiveKitPublisher(
        room_service,
        topic=settings.topic,
        destinations=settings.destinations,
        timeout=settings.send_timeout_seconds,
        retries=settings.send_retries,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
    )


@dataclass(frozen=True)
class Stores:
    rooms: RoomStore
    sent: SentRecord
    leases: KeyValue


async def provision(bus: Bus, settings: ActionsSettings, replicas: int = 1) -> Stores:
    """Create (or check) the streams and buckets the service uses; idempotent."""
    await bus.ensure_stream(events_stream(replicas))
    await WorkStream(
        settings.partitions,
        name=settings.work_stream,
        replicas=replicas,
        max_age_seconds=settings.work_max_age_seconds,
    ).ensure(bus)
    rooms = await bus.ensure_kv(
        STATE_BUCKET, ttl_seconds=settings.state_ttl_seconds, replicas=replicas
    )
    sent = await bus.ensure_kv(
        SENT_BUCKET, ttl_seconds=settings.sent_ttl_seconds, replicas=replicas
    )
    leases = await bus.ensure_kv(
        settings.lease_bucket, ttl_seconds=settings.lease_ttl_seconds, replicas=replicas
    )
    return Stores(RoomStore(rooms), SentRecord(sent), leases)


def engine_factory(
    settings: ActionsSettings,
    bus: Bus,
    stores: Stores,
    publisher: Publisher,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
) -> EngineFactory:
    """A fresh engine (empty memory) for each partition this replica acquires; the
    replica's held gestures and waiting packets are gauges over the live engines."""
    rules = rules_config(settings)
    live: weakref.WeakSet[Engine] = weakref.WeakSet()
    meter = metrics.get_meter("avatar_actions", meter_provider=meter_provider)

    def gauge(count: Callable[[Engine], int]) -> Callable[..., list[metrics.Observation]]:
        return lambda _: [metrics.Observation(sum(count(e) for e in list(live)))]

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

    def build(partition: int) -> Engine:
        engine = Engine(
            partition,
            rules,
            stores.rooms,
            stores.sent,
            publisher,
            bus,
            max_rooms=settings.max_cached_rooms,
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
        )
        live.add(engine)
        return engine

    return build


def ownership(settings: ActionsSettings, stores: Stores, me: str | None = None) -> Ownership:
    return Ownership(
        stores.leases, me or replica_id(), settings.partitions, ttl=settings.lease_ttl_seconds
    )


async def consume(
    settings: ActionsSettings,
    bus: Bus,
    owner: Ownership,
    engines: EngineFactory,
    stop: asyncio.Event,
) -> None:
    await consumer.run(
        bus,
        owner,
        engines,
        stop,
        consumer=settings.consumer,
        stream=settings.work_stream,
        batch=settings.batch_size,
    )


def health_app(ready: Callable[[], str | None]) -> FastAPI:
    """``/readyz`` answers 503 with ``ready()``'s reason while it returns one."""
    return build_app(
        title="avatar-backend actions service",
        description="Health, readiness and metrics of the actions service.",
        version=VERSION,
        routers=[],
        http=httpx.AsyncClient(),
        cors=Cors(origins=[], methods=[], headers=[]),
        ready=ready,
    )
