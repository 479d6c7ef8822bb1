"""Spans exported from the event loop (avatar_shared.span_export) to an OTLP receiver that
decodes what it is sent: everything arrives, as one request per batch, without the loop
waiting behind a whole batch, and nothing is lost when the loop ends mid-batch."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import AsyncIterator

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider

from avatar_shared import span_export
from avatar_shared.span_export import SLICE, LoopSpanProcessor
from tests.support.otlp_receiver import OtlpReceiver, running

pytestmark = pytest.mark.integration


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    async with running(OtlpReceiver()) as receiver:
        yield receiver


def provider_for(receiver: OtlpReceiver, **limits: int) -> tuple[TracerProvider, LoopSpanProcessor]:
    exporter = OTLPSpanExporter(endpoint=f"{receiver.endpoint}/v1/traces", timeout=5)
    processor = LoopSpanProcessor(exporter, **limits)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    return provider, processor


def end_spans(provider: TracerProvider, count: int, prefix: str = "s") -> None:
    tracer = provider.get_tracer("test")
    for i in range(count):
        tracer.start_span(f"{prefix}{i}").end()


async def received(receiver: OtlpReceiver, count: int) -> None:
    async with asyncio.timeout(10):
        while len(receiver.spans) < count:
            await asyncio.sleep(0.01)


async def test_spans_ended_on_the_loop_reach_the_collector_in_one_request(
    receiver: OtlpReceiver,
) -> None:
    provider, _ = provider_for(receiver, schedule_delay_millis=50)
    count = 3 * SLICE + 5  # several slices, concatenated into one request
    end_spans(provider, count)
    await received(receiver, count)
    assert [s.name for s in receiver.spans] == [f"s{i}" for i in range(count)]
    assert receiver.requests == 1
    await asyncio.to_thread(provider.shutdown)


async def test_a_batch_is_encoded_in_slices_with_the_loop_running_between_them(
    receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    ticks = 0
    seen: list[int] = []  # the ticker's count at each slice

    def encode(spans: list[ReadableSpan]) -> object:
        seen.append(ticks)
        assert len(spans) <= SLICE
        return real(spans)

    real = span_export.encode_spans
    monkeypatch.setattr(span_export, "encode_spans", encode)
    provider, _ = provider_for(receiver, schedule_delay_millis=3_600_000, max_export_batch_size=256)
    end_spans(provider, 256)  # a full batch wakes the export at once
    while len(receiver.spans) < 256:
        ticks += 1
        await asyncio.sleep(0)
    assert len(seen) == 256 // SLICE
    assert all(later > earlier for earlier, later in itertools.pairwise(seen))
    await asyncio.to_thread(provider.shutdown)


async def test_spans_of_a_loop_that_ended_mid_batch_are_exported_at_shutdown(
    receiver: OtlpReceiver,
) -> None:
    provider, _ = provider_for(receiver, schedule_delay_millis=3_600_000, max_export_batch_size=64)

    async def service() -> None:  # ends with a batch due and its export just started
        end_spans(provider, 64)
        await asyncio.sleep(0)

    await asyncio.to_thread(asyncio.run, service())
    assert receiver.spans == []
    await asyncio.to_thread(provider.shutdown)
    assert sorted(s.name for s in receiver.spans) == sorted(f"s{i}" for i in range(64))


async def test_spans_ended_off_any_loop_wait_for_one_or_for_shutdown(
    receiver: OtlpReceiver,
) -> None:
    provider, _ = provider_for(receiver, schedule_delay_millis=20)
    thread = threading.Thread(target=end_spans, args=(provider, 5, "thread"))
    thread.start()
    thread.join()
    await asyncio.sleep(0.2)
    assert receiver.spans == []  # no loop has ended a span yet
    end_spans(provider, 1, "loop")  # this one starts the export on this loop
    await received(receiver, 6)
    assert {s.name for s in receiver.spans} == {f"thread{i}" for i in range(5)} | {"loop0"}
    await asyncio.to_thread(provider.shutdown)


async def test_the_queue_is_bounded_and_drops_are_counted(receiver: OtlpReceiver) -> None:
    provider, processor = provider_for(receiver, max_queue_size=10)
    await asyncio.to_thread(end_spans, provider, 15)  # off the loop: nothing exports yet
    assert processor.dropped == 5
    await asyncio.to_thread(provider.shutdown)
    assert len(receiver.spans) == 10


async def test_a_later_loop_takes_over_the_export(receiver: OtlpReceiver) -> None:
    provider, _ = provider_for(receiver, schedule_delay_millis=20)

    async def service(prefix: str) -> None:
        end_spans(provider, 3, prefix)
        await asyncio.sleep(0.3)  # several schedule delays: exported meanwhile

    await asyncio.to_thread(asyncio.run, service("first"))
    await asyncio.to_thread(asyncio.run, service("second"))
    await received(receiver, 6)
    assert {s.name for s in receiver.spans} >= {"second0", "second1", "second2"}
    await asyncio.to_thread(provider.shutdown)
