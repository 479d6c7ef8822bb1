"""Integration fixtures: a Bus on the session's real NATS, in-memory telemetry per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from avatar_shared.bus import Bus, events_stream
from tests.support.nats_server import NatsServer


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer_provider(spans: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    return provider


@pytest.fixture
def metric_reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def meter_provider(metric_reader: InMemoryMetricReader) -> MeterProvider:
    return MeterProvider(metric_readers=[metric_reader])


@pytest.fixture
def room() -> str:
    """A room name unique to the test, with the characters subjects cannot carry."""
    return f"test.{uuid.uuid4().hex[:12]} *>✨"


@pytest.fixture
async def bus(
    nats_server: NatsServer, tracer_provider: TracerProvider, meter_provider: MeterProvider
) -> AsyncIterator[Bus]:
    bus = await Bus.connect(
        nats_server.admin,
        name="test",
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
    )
    await bus.ensure_stream(events_stream())
    yield bus
    await bus.close()


def metric_points(
    reader: InMemoryMetricReader, name: str
) -> dict[tuple[tuple[str, object], ...], float]:
    """Sum points of one metric by their sorted attributes."""
    data = reader.get_metrics_data()
    points: dict[tuple[tuple[str, object], ...], float] = {}
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == name:
                    for point in metric.data.data_points:
                        key = tuple(sorted((point.attributes or {}).items()))
                        points[key] = points.get(key, 0) + point.value  # type: ignore[union-attr]
    return points


@pytest.fixture
async def nats_client(nats_server: NatsServer) -> AsyncIterator[NatsClient]:
    """A raw connection, for tests to look at and set up what the services' Bus hides."""
    nc = await nats.connect(nats_server.url, nkeys_seed=nats_server.admin.nkey_seed_file)
    yield nc
    await nc.drain()


@pytest.fixture
def js(nats_client: NatsClient) -> JetStreamContext:
    return nats_client.jetstream()
