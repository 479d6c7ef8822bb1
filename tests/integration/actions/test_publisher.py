"""The LiveKit publisher against the LiveKit server double, through the real livekit-api."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator

import aiohttp
import jwt
import pytest
from livekit import api
from livekit.protocol.models import DataPacket
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from avatar_actions.ports import Packet, PublishError, TooLate, packet_nonce
from avatar_actions.publisher import LiveKitPublisher, Transit
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
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as http:
        yield http


def publisher(
    livekit: LiveKitDouble,
    session: aiohttp.ClientSession,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
    *,
    key: str = KEY,
    secret: str = SECRET,
    **kwargs: object,
) -> LiveKitPublisher:
    return LiveKitPublisher(
        livekit.url,
        key,
        secret,
        session,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        **({"sleep": no_wait} | kwargs),  # type: ignore[arg-type]
    )


def packet(room: str = "r", action: str = "nod", cause: str = "event-1") -> Packet:
    return Packet(room, action, packet_nonce(room, cause, action))


async def test_packets_arrive_byte_compatible_with_the_reference(
    livekit: LiveKitDouble, session: aiohttp.ClientSession
) -> None:
    await publisher(livekit, session).publish(packet("room.1 ✨", "wave_hand"))
    (got,) = livekit.received
    assert got.request.room == "room.1 ✨"
    assert got.request.data == json.dumps({"type": "AVATAR_UPDATE", "action": "wave_hand"}).encode()
    assert got.request.kind == DataPacket.Kind.RELIABLE
    assert list(got.request.destination_identities) == []
    assert got.request.nonce == packet_nonce("room.1 ✨", "event-1", "wave_hand")


async def test_topic_and_destinations_are_configurable(
    livekit: LiveKitDouble, session: aiohttp.ClientSession
) -> None:
    await publisher(livekit, session, topic="avatar", destinations=["user-1"]).publish(packet())
    (got,) = livekit.received
    assert got.request.topic == "avatar"
    assert list(got.request.destination_identities) == ["user-1"]


async def test_5xx_is_retried_until_it_succeeds(
    livekit: LiveKitDouble,
    session: aiohttp.ClientSession,
    metric_reader: InMemoryMetricReader,
    meter_provider: MeterProvider,
) -> None:
    livekit.fail_with = [503, 500]
    await publisher(livekit, session, meter_provider=meter_provider).publish(packet())
    assert livekit.attempts == 3
    assert len(livekit.received) == 1
    assert metric_points(metric_reader, "avatar.actions.send.retries") == {(): 2}


async def test_retries_are_bounded(livekit: LiveKitDouble, session: aiohttp.ClientSession) -> None:
    livekit.fail_with = [503] * 10
    with pytest.raises(PublishError) as failed:
        await publisher(livekit, session, retries=2).publish(packet())
    assert not failed.value.permanent
    assert livekit.attempts == 3


@pytest.mark.parametrize(
    "answer",
    [
        (200, "text/html", b"<html>sign in</html>"),  # a proxy's page, or the wrong URL
        (200, "application/protobuf", b"\xff\xff\xff"),
        (503, "application/json", b"[1, 2]"),  # JSON, not a Twirp error object
        (404, "application/json", b'"not found"'),
    ],
    ids=["html-200", "garbage-200", "list-503", "string-404"],
)
async def test_an_answer_livekit_api_cannot_read_is_retried_not_a_crash(
    livekit: LiveKitDouble, session: aiohttp.ClientSession, answer: tuple[int, str, bytes]
) -> None:
    livekit.odd_answers = [answer]
    await publisher(livekit, session).publish(packet())
    assert livekit.attempts == 2
    assert len(livekit.received) == 1
    livekit.odd_answers = [answer] * 10
    with pytest.raises(PublishError) as failed:
        await publisher(livekit, session, retries=2).publish(packet(cause="event-2"))
    assert not failed.value.permanent


async def test_a_4xx_is_final(livekit: LiveKitDouble, session: aiohttp.ClientSession) -> None:
    livekit.fail_with = [400]
    with pytest.raises(PublishError) as failed:
        await publisher(livekit, session).publish(packet())
    assert failed.value.permanent
    assert livekit.attempts == 1


async def test_slow_answers_time_out_and_are_retried(
    livekit: LiveKitDouble, session: aiohttp.ClientSession
) -> None:
    livekit.delay = 0.5
    with pytest.raises(PublishError) as failed:
        await publisher(livekit, session, timeout=0.1, retries=1).publish(packet())
    assert not failed.value.permanent
    assert livekit.attempts == 2


async def test_the_double_checks_tokens_as_livekit_server_does(
    livekit: LiveKitDouble, session: aiohttp.ClientSession
) -> None:
    for key, secret in (
        (KEY, "another-secret-that-is-long-enough-0123456789"),
        ("APIother", SECRET),
    ):
        with pytest.raises(PublishError) as refused:
            await publisher(livekit, session, key=key, secret=secret).publish(packet())
        assert refused.value.permanent
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
    session: aiohttp.ClientSession,
    spans: InMemorySpanExporter,
    tracer_provider: TracerProvider,
) -> None:
    await publisher(livekit, session, tracer_provider=tracer_provider).publish(packet())
    (span,) = spans.get_finished_spans()
    assert span.name == "livekit.RoomService/SendData"
    assert span.kind.name == "CLIENT"
    assert dict(span.attributes or {})["avatar.send.attempts"] == 1


async def test_a_retried_packet_keeps_its_nonce_and_is_delivered_once(
    livekit: LiveKitDouble, session: aiohttp.ClientSession
) -> None:
    livekit.stall_after_accepting = 0.3  # accepted, then the answer comes too late
    sender = publisher(livekit, session, timeout=0.1, retries=3)
    with contextlib.suppress(PublishError):
        await sender.publish(packet())
    livekit.stall_after_accepting = 0.0
    await sender.publish(packet())  # a redelivery, or a successor replica, sends it again
    assert livekit.attempts >= 3
    assert len(livekit.received) == 1
    assert {d.request.nonce for d in livekit.duplicates} == {livekit.received[0].request.nonce}


async def test_nonces_tell_packets_apart() -> None:
    nonces = {
        packet_nonce(room, cause, action)
        for room in ("r1", "r2")
        for cause in ("e1", "e2")
        for action in ("nod", "speaking")
    }
    assert len(nonces) == 8
    assert all(len(n) == 16 for n in nonces)
    assert packet_nonce("r1", "e1", "nod") == packet_nonce("r1", "e1", "nod")


async def test_a_packet_past_its_deadline_is_not_sent(
    livekit: LiveKitDouble, session: aiohttp.ClientSession
) -> None:
    late = Packet("r", "nod", packet_nonce("r", "e", "nod"), deadline=time.time() - 0.1)
    with pytest.raises(TooLate):
        await publisher(livekit, session).publish(late)
    assert livekit.attempts == 0
    # ... nor retried past it: the first attempt fails, the retry would be late.
    livekit.fail_with = [503]
    soon = Packet("r", "nod", packet_nonce("r", "e", "nod"), deadline=time.time() + 0.2)
    with pytest.raises(TooLate):
        await publisher(livekit, session, sleep=lambda _: asyncio.sleep(0.3)).publish(soon)
    assert livekit.attempts == 1


async def test_a_packet_that_would_arrive_past_its_deadline_is_not_sent(
    livekit: LiveKitDouble, session: aiohttp.ClientSession
) -> None:
    sender = publisher(livekit, session, max_transit=1.0)
    livekit.delay = 0.2  # LiveKit answers in 0.2 s now
    await sender.publish(Packet("r", "nod", packet_nonce("r", "e1", "nod"), time.time() + 5))
    # 0.1 s left: on time now, but it would arrive after its deadline
    tight = Packet("r", "nod", packet_nonce("r", "e2", "nod"), time.time() + 0.1)
    with pytest.raises(TooLate):
        await sender.publish(tight)
    assert livekit.attempts == 1
    roomy = Packet("r", "nod", packet_nonce("r", "e3", "nod"), time.time() + 0.5)
    await sender.publish(roomy)
    assert livekit.attempts == 2


async def test_the_transit_estimate_is_capped_and_forgets_slow_answers() -> None:
    transit = Transit(cap=0.5, window=5.0)
    assert transit.estimate(100.0) == 0.0
    transit.record(100.0, 0.05)
    transit.record(101.0, 2.0)  # one very slow answer
    transit.record(102.0, 0.01)
    assert transit.estimate(102.0) == 0.5  # capped: it sheds at most the last 0.5 s
    transit = Transit(cap=10.0, window=5.0)
    transit.record(100.0, 0.3)
    transit.record(101.0, 0.1)
    transit.record(102.0, 0.2)
    assert transit.estimate(102.0) == 0.3  # the window's slowest
    assert transit.estimate(105.5) == 0.2  # the 0.3 s answer is older than the window
    assert transit.estimate(200.0) == 0.0
