"""Composition root: settings and adapters in; the engine and its health app out."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import httpx
from fastapi import FastAPI
from opentelemetry import metrics, trace

from avatar_actions.config import ActionsSettings
from avatar_actions.engine import Engine
from avatar_actions.publisher import DryRunPublisher, LiveKitPublisher, Publisher
from avatar_actions.rules import RulesConfig
from avatar_actions.store import RoomStore, SentRecord
from avatar_shared.bus import Bus
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


def build_engine(
    settings: ActionsSettings,
    bus: Bus,
    rooms: RoomStore,
    sent: SentRecord,
    publisher: Publisher,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
) -> Engine:
    return Engine(
        rules_config(settings),
        rooms,
        sent,
        publisher,
        bus,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
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
