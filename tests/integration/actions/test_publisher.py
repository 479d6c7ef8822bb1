"""The LiveKit publisher against the LiveKit server double, through the real livekit-api."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import jwt
import pytest
from livekit import api
from livekit.protocol.models import DataPacket
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from avatar_actions.ports import Packet, PublishError
from avatar_actions.publisher import LiveKitPublisher
from tests.integration.conftest import metric_points
from tests.support.livekit_server import LiveKitDouble, running_livekit

KEY, SECRET = "APIactions", "actions-test-secret-that-is-long-enough-0123456789"


async def no_wait(_: float) -> None:
    return None


@pytest.fixture
async def livekit() -> AsyncIterator[LiveKitDouble]:
    async with running_livekit(LiveKitDouble(keys={KEY: SECRET})) as double:
        yield double


@pytest.fixture
async def lk_api(livekit: LiveKitDouble) -> AsyncIterator[api.LiveKitAPI]:
    client = api.LiveKitAPI(livekit.url, KEY, SECRET)
    yield client
    await client.aclose()


def publisher(
    lk_api: api.LiveKitAPI,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
    **kwargs: object,
) -> LiveKitPublisher:
    return LiveKitPublisher(
        lk_api.room,
        sleep=no_wait,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        **kwargs,  # type: ignore[arg-type]
    )


async def test_packets_arrive_byte_compatible_with_the_reference(
    livekit: LiveKitDouble, lk_api: api.LiveKitAPI
) -> None:
    await publisher(lk_api).publish(Packet(room="room.1 ✨", action="wave_hand"))
    (got,) = livekit.received
    assert got.request.room == "room.1 ✨"
    assert got.request.data == json.dumps({"type": "AVATAR_UPDATE", "action": "wave_hand"}).encode()
    assert got.request.kind == DataPacket.Kind.RELIABLE
    assert list(got.request.destination_identities) == []
    assert len(got.request.nonce) == 16


async def test_topic_and_destinations_are_configurable(
    livekit: LiveKitDouble, lk_api: api.LiveKitAPI
) -> None:
    await publisher(lk_api, topic="avatar", destinations=["user-1"]).publish(
        Packet(room="r", action="nod")
    )
    (got,) = livekit.received
    assert got.request.topic == "avatar"
    assert list(got.request.destination_identities) == ["user-1"]


async def test_5xx_is_retried_until_it_succeeds(
    livekit: LiveKitDouble,
    lk_api: api.LiveKitAPI,
    metric_reader: InMemoryMetricReader,
    meter_provider: MeterProvider,
) -> None:
    livekit.fail_with = [503, 500]
    await publisher(lk_api, meter_provider=meter_provider).publish(Packet(room="r", action="nod"))
    assert livekit.attempts == 3
    assert len(livekit.received) == 1
    assert metric_points(metric_reader, "avatar.actions.send.retries") == {(): 2}


async def test_retries_are_bounded(livekit: LiveKitDouble, lk_api: api.LiveKitAPI) -> None:
    livekit.fail_with = [503] * 10
    with pytest.raises(PublishError) as failed:
        await publisher(lk_api, retries=2).publish(Packet(room="r", action="nod"))
    assert not failed.value.permanent
    assert livekit.attempts == 3


async def test_a_4xx_is_final(livekit: LiveKitDouble, lk_api: api.LiveKitAPI) -> None:
    livekit.fail_with = [400]
    with pytest.raises(PublishError) as failed:
        await publisher(lk_api).publish(Packet(room="r", action="nod"))
    assert failed.value.permanent
    assert livekit.attempts == 1


async def test_slow_answers_time_out_and_are_retried(
    livekit: LiveKitDouble, lk_api: api.LiveKitAPI
) -> None:
    livekit.delay = 0.5
    with pytest.raises(PublishError) as failed:
        await publisher(lk_api, timeout=0.1, retries=1).publish(Packet(room="r", action="nod"))
    assert not failed.value.permanent
    assert livekit.attempts == 2


async def test_the_double_checks_tokens_as_livekit_server_does(livekit: LiveKitDouble) -> None:
    wrong_secret = api.LiveKitAPI(livekit.url, KEY, "another-secret-that-is-long-enough-0123456789")
    unknown_key = api.LiveKitAPI(livekit.url, "APIother", SECRET)
    try:
        for client in (wrong_secret, unknown_key):
            with pytest.raises(PublishError) as refused:
                await publisher(client).publish(Packet(room="r", action="nod"))
            assert refused.value.permanent
    finally:
        await wrong_secret.aclose()
        await unknown_key.aclose()
    now = int(time.time())
    cases = {
        "expired": {
            "iss": KEY,
            "nbf": now - 120,
            "exp": now - 60,
            "video": {"roomAdmin": True, "room": "r"},
        },
        "no roomAdmin": {"iss": KEY, "nbf": now, "exp": now + 60, "video": {"room": "r"}},
        "other room": {
            "iss": KEY,
            "nbf": now,
            "exp": now + 60,
            "video": {"roomAdmin": True, "room": "x"},
        },
    }
    for name, claims in cases.items():
        token = jwt.encode(claims, SECRET, algorithm="HS256")
        client = api.LiveKitAPI(livekit.url, token=token)
        try:
            with pytest.raises(api.ServerError) as refused:
                await client.room.send_data(api.SendDataRequest(room="r", data=b"{}"))
        finally:
            await client.aclose()
        assert refused.value.status in (401, 403), name
    assert livekit.received == []


async def test_send_data_is_a_client_span(
    livekit: LiveKitDouble,
    lk_api: api.LiveKitAPI,
    spans: InMemorySpanExporter,
    tracer_provider: TracerProvider,
) -> None:
    await publisher(lk_api, tracer_provider=tracer_provider).publish(Packet(room="r", action="nod"))
    (span,) = spans.get_finished_spans()
    assert span.name == "livekit.RoomService/SendData"
    assert span.kind.name == "CLIENT"
    assert dict(span.attributes or {})["avatar.send.attempts"] == 1
