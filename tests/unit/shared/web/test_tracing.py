"""ServerTelemetry: one SERVER span per request, errors on the span, probes not traced."""

from __future__ import annotations

import httpx
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from avatar_shared.web.tracing import ServerTelemetry


class Boom(Exception):
    pass


async def ok(_: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def unavailable(_: Request) -> PlainTextResponse:
    return PlainTextResponse("no", status_code=503)


async def boom(_: Request) -> PlainTextResponse:
    raise Boom("it broke")


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def client(spans: InMemorySpanExporter) -> httpx.AsyncClient:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    routes = [
        Route("/items/{id}", ok),
        Route("/down", unavailable),
        Route("/boom", boom),
        Route("/healthz", ok),
    ]
    app = ServerTelemetry(
        Starlette(routes=routes), tracer_provider=provider, meter_provider=MeterProvider()
    )
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


async def test_a_request_is_one_server_span_named_by_its_route(
    client: httpx.AsyncClient, spans: InMemorySpanExporter
) -> None:
    assert (await client.get("/items/42?name=secret")).status_code == 200
    [span] = spans.get_finished_spans()
    assert span.name == "GET /items/{id}"
    assert span.kind is SpanKind.SERVER
    assert span.status.status_code is StatusCode.UNSET
    assert dict(span.attributes or {}) == {
        "http.request.method": "GET",
        "url.path": "/items/42",
        "http.route": "/items/{id}",
        "http.response.status_code": 200,
    }


async def test_a_5xx_answer_marks_the_span_as_an_error(
    client: httpx.AsyncClient, spans: InMemorySpanExporter
) -> None:
    assert (await client.get("/down")).status_code == 503
    [span] = spans.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR


async def test_an_exception_is_recorded_with_its_description(
    client: httpx.AsyncClient, spans: InMemorySpanExporter
) -> None:
    assert (await client.get("/boom")).status_code == 500
    [span] = spans.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "Boom: it broke"
    assert [e.name for e in span.events] == ["exception"]
    assert (span.attributes or {})["http.response.status_code"] == 500


async def test_probes_are_not_traced(
    client: httpx.AsyncClient, spans: InMemorySpanExporter
) -> None:
    assert (await client.get("/healthz")).status_code == 200
    assert spans.get_finished_spans() == ()
