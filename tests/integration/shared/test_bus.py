"""The bus helpers against a real nats-server with JetStream."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import uuid
import warnings

import nats
import pytest
from nats.js import JetStreamContext, api
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from avatar_shared import subjects
from avatar_shared.bus import Bus, StreamSpec, events_stream
from avatar_shared.config import NatsSettings
from avatar_shared.events import Event, PlayoutStarted, SpeechDone
from tests.integration.conftest import metric_points
from tests.support.events import one_of_each
from tests.support.nats_server import NatsServer

pytestmark = pytest.mark.timeout(60)


async def _consumer(js: JetStreamContext, room: str) -> JetStreamContext.PullSubscription:
    return await js.pull_subscribe(
        subjects.room_filter(room),
        stream=subjects.EVENTS_STREAM,
        config=api.ConsumerConfig(ack_wait=5, deliver_policy=api.DeliverPolicy.ALL),
    )


async def _drain_into(bus: Bus, sub: JetStreamContext.PullSubscription, want: int) -> list[Event]:
    """Process messages until the handler has seen ``want`` events."""
    seen: list[Event] = []

    async def handler(event: Event) -> None:
        seen.append(event)

    async with asyncio.timeout(20):
        while len(seen) < want:
            for msg in await sub.fetch(batch=10, timeout=5):
                await bus.process(msg, handler, consumer="test")
    return seen


async def test_events_of_every_type_cross_the_bus_in_order(
    bus: Bus, room: str, js: JetStreamContext
) -> None:
    sent = one_of_each(room=room)
    for event in sent:
        await bus.publish(event)
    received = await _drain_into(bus, await _consumer(js, room), len(sent))
    assert received == sent


async def test_publishing_the_same_event_twice_stores_it_once(
    bus: Bus, room: str, js: JetStreamContext
) -> None:
    event = PlayoutStarted(room=room, speech_id="s1", seq=0)
    first = await bus.publish(event)
    again = await bus.publish(event)
    assert not first.duplicate
    assert again.duplicate
    assert again.seq == first.seq
    info = await js.stream_info(subjects.EVENTS_STREAM, subjects_filter=event.subject)
    assert info.state.subjects == {event.subject: 1}


async def test_trace_context_survives_publish_then_consume(
    bus: Bus, room: str, spans: InMemorySpanExporter, js: JetStreamContext
) -> None:
    event = SpeechDone(room=room, speech_id="s1", seq=0, interrupted=False)
    await bus.publish(event)
    await _drain_into(bus, await _consumer(js, room), 1)

    by_kind = {s.kind: s for s in spans.get_finished_spans()}
    producer, consumer = by_kind[SpanKind.PRODUCER], by_kind[SpanKind.CONSUMER]
    assert producer.name == "avatars.v1.agent.speech_done.{room} publish"
    assert consumer.name == "avatars.v1.agent.speech_done.{room} process"
    assert consumer.context.trace_id == producer.context.trace_id
    assert consumer.parent is not None
    assert consumer.parent.span_id == producer.context.span_id
    assert producer.attributes is not None
    assert consumer.attributes is not None
    assert producer.attributes["messaging.system"] == "nats"
    assert producer.attributes["messaging.message.id"] == event.id
    assert consumer.attributes["messaging.destination.name"] == event.subject
    assert consumer.attributes["avatar.event.type"] == "speech_done"


async def test_unknown_fields_sent_over_the_wire_are_ignored(
    bus: Bus, room: str, js: JetStreamContext
) -> None:
    event = PlayoutStarted(room=room, speech_id="s1", seq=0)
    body = json.loads(event.to_json()) | {"future_field": True}
    await js.publish(event.subject, json.dumps(body).encode())
    assert await _drain_into(bus, await _consumer(js, room), 1) == [event]


async def test_invalid_messages_are_dropped_counted_and_do_not_block_the_room(
    bus: Bus, room: str, metric_reader: InMemoryMetricReader, js: JetStreamContext
) -> None:
    subject = subjects.subject_for(subjects.AGENT, "playout_started", room)
    await js.publish(subject, b"{not json")
    await js.publish(subject, b'{"type": "playout_started", "room": "elsewhere"}')
    other_room = PlayoutStarted(room=room + "-other", speech_id="s0", seq=0)
    await js.publish(subject, other_room.to_json())  # body and subject disagree
    await js.publish(subject, b'{"type": "playout_started", "seq": ' + b"9" * 5000 + b"}")
    await js.publish(subject, b"[" * 200_000 + b"]" * 200_000)  # past the parser's depth
    good = PlayoutStarted(room=room, speech_id="s1", seq=0)
    await bus.publish(good)

    sub = await _consumer(js, room)
    assert await _drain_into(bus, sub, 1) == [good]
    assert metric_points(metric_reader, "avatar.bus.dropped") == {
        (("avatar.reason", "invalid"),): 5
    }
    # Dropped messages were terminated, not left for redelivery. Acks are asynchronous on
    # the server, so wait until it has applied them.
    async with asyncio.timeout(10):
        while (info := await sub.consumer_info()).num_ack_pending:
            await asyncio.sleep(0.02)
    assert info.num_redelivered == 0


async def test_a_failing_handler_gets_the_message_again(
    bus: Bus, room: str, metric_reader: InMemoryMetricReader, js: JetStreamContext
) -> None:
    event = PlayoutStarted(room=room, speech_id="s1", seq=0)
    await bus.publish(event)
    sub = await _consumer(js, room)
    attempts: list[Event] = []

    async def flaky(received: Event) -> None:
        attempts.append(received)
        if len(attempts) == 1:
            raise RuntimeError("transient")

    async with asyncio.timeout(20):
        while len(attempts) < 2:
            for msg in await sub.fetch(batch=1, timeout=5):
                await bus.process(msg, flaky)
    assert attempts == [event, event]
    outcomes = metric_points(metric_reader, "avatar.bus.consumed")
    assert outcomes[(("avatar.event.type", "playout_started"), ("avatar.outcome", "error"))] == 1
    assert outcomes[(("avatar.event.type", "playout_started"), ("avatar.outcome", "ok"))] == 1


async def test_stream_provisioning_is_idempotent_and_converges(
    bus: Bus, js: JetStreamContext
) -> None:
    name = f"TEST_{uuid.uuid4().hex[:8]}"
    spec = StreamSpec(name=name, subjects=(f"test.{name}.>",), duplicate_window_seconds=30)
    infos = await asyncio.gather(*(bus.ensure_stream(spec) for _ in range(4)))
    assert {info.config.name for info in infos} == {name}

    changed = StreamSpec(name=name, subjects=spec.subjects, duplicate_window_seconds=60)
    info = await bus.ensure_stream(changed)
    assert info.config.duplicate_window == 60
    await js.delete_stream(name)


async def test_events_stream_is_declared_once(bus: Bus) -> None:
    info = await bus.ensure_stream(events_stream())
    assert info.config.subjects == ["avatars.v1.>"]
    assert info.config.duplicate_window == 120


async def test_consumer_provisioning_is_idempotent(
    bus: Bus, room: str, js: JetStreamContext
) -> None:
    name = f"test-{uuid.uuid4().hex[:8]}"
    config = api.ConsumerConfig(
        name=name,
        durable_name=name,
        filter_subject=subjects.room_filter(room),
        ack_policy=api.AckPolicy.EXPLICIT,
        max_ack_pending=10,
    )
    first = await bus.ensure_consumer(subjects.EVENTS_STREAM, config)
    again = await bus.ensure_consumer(subjects.EVENTS_STREAM, config)
    assert first.name == again.name == name
    with pytest.raises(ValueError, match="needs a name"):
        await bus.ensure_consumer(subjects.EVENTS_STREAM, api.ConsumerConfig())
    await js.delete_consumer(subjects.EVENTS_STREAM, name)


async def test_close_drains_pending_publishes(nats_server, room: str, js: JetStreamContext) -> None:  # type: ignore[no-untyped-def]

    settings = nats_server.admin
    publisher = await Bus.connect(settings, name="publisher")
    event = PlayoutStarted(room=room, speech_id="s1", seq=0)
    await publisher.publish(event)
    await publisher.close()
    assert not publisher.connected

    reader = await Bus.connect(settings, name="reader")
    try:
        info = await js.stream_info(subjects.EVENTS_STREAM, subjects_filter=event.subject)
        assert info.state.subjects == {event.subject: 1}
    finally:
        await reader.close()


async def test_publishing_resumes_after_nats_restarts_and_keeps_stored_events(
    nats_server, room: str, js: JetStreamContext
) -> None:  # type: ignore[no-untyped-def]

    bus = await Bus.connect(nats_server.admin, name="restart")
    try:
        await bus.ensure_stream(events_stream())
        before = PlayoutStarted(room=room, speech_id="s1", seq=0)
        await bus.publish(before)
        await asyncio.to_thread(nats_server.restart)
        after = PlayoutStarted(room=room, speech_id="s2", seq=1)
        async with asyncio.timeout(30):
            while True:
                try:
                    await bus.publish(after)  # same event id on every retry
                    break
                except (nats.errors.Error, nats.js.errors.Error, TimeoutError):
                    await asyncio.sleep(0.1)
        assert await _drain_into(bus, await _consumer(js, room), 2) == [before, after]
    finally:
        await bus.close()


async def test_key_value_provisioning_is_idempotent_and_converges(
    bus: Bus, js: JetStreamContext
) -> None:
    bucket = f"test_{uuid.uuid4().hex[:8]}"
    first, second = await asyncio.gather(
        bus.ensure_kv(bucket, ttl_seconds=60), bus.ensure_kv(bucket, ttl_seconds=60)
    )
    await first.put("k", b"v")
    assert await second.get("k") == b"v"
    changed = await bus.ensure_kv(bucket, ttl_seconds=120)
    info = await js.stream_info(f"KV_{bucket}")
    assert info.config.max_age == 120
    assert await changed.get("k") == b"v"
    await js.delete_key_value(bucket)


async def test_lame_duck_notices_are_logged_and_counted(
    meter_provider: MeterProvider,
    metric_reader: InMemoryMetricReader,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from tests.support.nats_server import start_nats_process

    server = start_nats_process()  # its own server: lame duck ends in a shutdown
    bus = await Bus.connect(server.admin, name="ldm", meter_provider=meter_provider)
    try:
        server.lame_duck()
        async with asyncio.timeout(10):
            while not metric_points(metric_reader, "avatar.bus.connection.events"):
                await asyncio.sleep(0.05)
        assert metric_points(metric_reader, "avatar.bus.connection.events") == {
            (("event", "lame_duck"),): 1
        }
        assert "nats connection lame_duck" in caplog.text
    finally:
        await bus.close()
        server.stop()


async def test_a_connection_attempt_given_up_leaves_nothing_running(
    nats_server: NatsServer,
) -> None:
    """A caller that stops waiting for Bus.connect (a call ending while NATS does not
    answer) must not leave nats-py's connection attempt retrying for ever."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accepts, never says INFO: the client waits and retries
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    nobody = NatsSettings(
        url=f"nats://127.0.0.1:{port}", nkey_seed_file=nats_server.admin.nkey_seed_file
    )
    attempt = asyncio.create_task(Bus.connect(nobody, name="given-up"))
    await asyncio.sleep(0.5)
    attempt.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await attempt
    await asyncio.sleep(0.1)
    lingering = [t for t in asyncio.all_tasks() if not t.done() and _in_nats_py(t)]
    server.close()
    # nats-py does not close a socket whose connect was cancelled mid-way; collect it
    # here rather than let its ResourceWarning surface in a later test
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    assert lingering == []


def _in_nats_py(task: asyncio.Task[object]) -> bool:
    code = getattr(task.get_coro(), "cr_code", None)
    return code is not None and "/nats/" in code.co_filename
