"""The event outbox: order, per-room seq, retry with the same id, bounded waiting and drops."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from avatar_agent.outbox import EventOutbox
from avatar_shared import semconv
from avatar_shared.events import Event, SessionStarted, SpeechDone


class FlakyBus:
    """Fails the first ``failures`` publish attempts, or hangs while ``hang`` is set."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.attempts: list[str] = []
        self.stored: list[Event] = []
        self.hang = asyncio.Event()

    async def publish(self, event: Event) -> None:
        self.attempts.append(event.id)
        if self.hang.is_set():
            await asyncio.sleep(3600)
        if self.failures:
            self.failures -= 1
            raise ConnectionError("nats: connection closed")
        self.stored.append(event)


def dropped(reader: InMemoryMetricReader) -> dict[str, float]:
    data = reader.get_metrics_data()
    out: dict[str, float] = {}
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == semconv.METRIC_AGENT_EVENTS_DROPPED:
                    for point in metric.data.data_points:
                        reason = str((point.attributes or {})[semconv.REASON])
                        out[reason] = out.get(reason, 0) + point.value  # type: ignore[union-attr]
    return out


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


def outbox(bus: FlakyBus, reader: InMemoryMetricReader, **kwargs: float) -> EventOutbox:
    return EventOutbox(
        bus,
        room="room-1",
        avatar_id="demo-avatar",
        retry_base=0.01,
        meter_provider=MeterProvider(metric_readers=[reader]),
        **kwargs,  # type: ignore[arg-type]
    )


async def test_events_are_stamped_and_published_in_order(reader: InMemoryMetricReader) -> None:
    bus = FlakyBus()
    box = outbox(bus, reader)
    box.start()
    for i in range(20):
        box.emit(SpeechDone, speech_id=f"s{i}", interrupted=False)
    await box.aclose()
    assert [e.seq for e in bus.stored] == list(range(20))
    assert {(e.room, e.avatar_id) for e in bus.stored} == {("room-1", "demo-avatar")}


async def test_a_failed_publish_is_retried_with_the_same_id(reader: InMemoryMetricReader) -> None:
    bus = FlakyBus(failures=3)
    box = outbox(bus, reader)
    box.start()
    event = box.emit(SessionStarted, agent_name="a")
    box.emit(SpeechDone, speech_id="s1", interrupted=True)
    await box.aclose()
    assert event is not None
    assert bus.attempts[:4] == [event.id] * 4  # the id is the Nats-Msg-Id: stored once
    assert [e.type for e in bus.stored] == ["session_started", "speech_done"]


async def test_emit_never_blocks_and_a_full_queue_drops_newest(
    reader: InMemoryMetricReader,
) -> None:
    bus = FlakyBus()
    box = outbox(bus, reader, max_queue=2)  # not started: nothing drains the queue
    results = [box.emit(SpeechDone, speech_id="s1", interrupted=False) for _ in range(5)]
    assert [r is not None for r in results] == [True, True, False, False, False]
    assert box.dropped == 3
    assert dropped(reader) == {"queue_full": 3}
    box.start()
    await box.aclose()
    assert [e.seq for e in bus.stored] == [0, 1]  # seq 2..4 left a visible gap


async def test_events_wait_a_bounded_time_for_nats_then_are_dropped(
    reader: InMemoryMetricReader,
) -> None:
    bus = FlakyBus()
    bus.hang.set()  # NATS down: publish never answers
    box = outbox(bus, reader, max_wait=0.3)
    box.start()
    box.emit(SpeechDone, speech_id="s1", interrupted=False)
    box.emit(SpeechDone, speech_id="s2", interrupted=False)
    await asyncio.sleep(0.5)
    assert dropped(reader) == {"timeout": 2}
    bus.hang.clear()  # NATS back: later events flow again
    box.emit(SpeechDone, speech_id="s3", interrupted=False)
    await box.aclose()
    assert [e.speech_id for e in bus.stored] == ["s3"]


async def test_close_publishes_what_it_can_then_drops_the_rest(
    reader: InMemoryMetricReader,
) -> None:
    bus = FlakyBus()
    bus.hang.set()
    box = outbox(bus, reader, max_wait=60)
    box.start()
    for i in range(3):
        box.emit(SpeechDone, speech_id=f"s{i}", interrupted=False)
    await box.aclose(flush_seconds=0.1)
    assert dropped(reader) == {"shutdown": 3}  # including the one in flight


async def test_an_event_that_breaks_the_contract_is_dropped_not_raised(
    reader: InMemoryMetricReader,
) -> None:
    box = outbox(FlakyBus(), reader)
    assert box.emit(SpeechDone, speech_id="not a valid id!", interrupted=False) is None
    assert dropped(reader) == {"invalid": 1}
