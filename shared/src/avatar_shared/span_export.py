"""Span export that keeps the event loop's latency: encode on the loop, post from a thread.

The SDK's ``BatchSpanProcessor`` encodes a batch to protobuf in its own thread, ~30 µs
a span in Python while holding the GIL: 512 spans are ~15 ms during which the event
loop, each time it comes back from a socket, waits for the GIL (up to the 5 ms switch
interval, again and again). Under ordinary load that stall is the service's p99
(docs/benchmarks.md, token). :class:`LoopSpanProcessor` does the same work in an
order the loop can live with:

- a finished span is appended to a bounded queue (``OTEL_BSP_MAX_QUEUE_SIZE``; past it
  spans are dropped and counted, as the SDK does);
- a task on the event loop the spans end on takes a batch every
  ``OTEL_BSP_SCHEDULE_DELAY`` ms (sooner once ``OTEL_BSP_MAX_EXPORT_BATCH_SIZE`` are
  waiting) and encodes it :data:`SLICE` spans at a time, yielding to the loop between
  slices, so no request waits behind more than one slice (~0.2-0.3 ms);
- the encoded request is posted by the OTLP exporter's own HTTP client (endpoint,
  headers, TLS, compression, retries from the ``OTEL_EXPORTER_OTLP_*`` variables) in a
  thread of its own, where it costs the loop ~1 ms of GIL a batch.

Slices are encoded as separate ``ExportTraceServiceRequest`` messages and concatenated:
protobuf parses concatenated messages as one whose repeated fields (``resource_spans``)
are appended, so the collector receives one request.

The task starts on the first loop a span ends on (and again on a later loop once that
one has ended). Spans that never meet a loop, and those left at exit, are exported
synchronously by :meth:`LoopSpanProcessor.shutdown` / ``force_flush``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from avatar_shared.otlp_spans import encode_spans

log = logging.getLogger(__name__)

#: Spans encoded between two yields to the event loop (~10-20 µs each).
SLICE = 16


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    try:
        return int(value) if value else default
    except ValueError:
        log.warning("%s=%r is not an integer; using %d", name, value, default)
        return default


class LoopSpanProcessor(SpanProcessor):
    def __init__(
        self,
        exporter: OTLPSpanExporter,
        *,
        max_queue_size: int | None = None,
        schedule_delay_millis: int | None = None,
        max_export_batch_size: int | None = None,
    ) -> None:
        self._exporter = exporter
        # The exporter's transport for bytes already encoded (its ``export`` would
        # encode again, in the calling thread); opentelemetry-exporter-otlp-proto-http
        # is locked in uv.lock and tests/integration/shared/test_span_export.py posts
        # through it.
        self._post = exporter._client.export
        self._max_queue = max_queue_size or _env_int("OTEL_BSP_MAX_QUEUE_SIZE", 2048)
        self._delay = (schedule_delay_millis or _env_int("OTEL_BSP_SCHEDULE_DELAY", 5000)) / 1e3
        self._batch = min(
            max_export_batch_size or _env_int("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512),
            self._max_queue,
        )
        self._queue: deque[ReadableSpan] = deque()
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="otlp-spans")
        self._shutdown = False
        self.dropped = 0

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        if self._shutdown or not span.context.trace_flags.sampled:
            return
        if len(self._queue) >= self._max_queue:
            self.dropped += 1
            log.warning("span queue full (%d); dropping spans", self._max_queue)
            return
        self._queue.append(span)
        if self._task is None or self._task.done() or self._loop_closed():
            self._start()
        elif len(self._queue) >= self._batch and self._wake is not None:
            self._wake_up()

    def _loop_closed(self) -> bool:
        return self._loop is not None and self._loop.is_closed()

    def _start(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # not on a loop: the next span ended on one starts the task
        self._loop = loop
        self._wake = asyncio.Event()
        self._task = loop.create_task(self._run(), name="otlp-span-export")

    def _wake_up(self) -> None:
        assert self._loop is not None
        assert self._wake is not None
        try:
            if asyncio.get_running_loop() is self._loop:
                self._wake.set()
                return
        except RuntimeError:
            pass
        if not self._loop_closed():
            self._loop.call_soon_threadsafe(self._wake.set)

    async def _run(self) -> None:
        assert self._wake is not None
        while not self._shutdown:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow the
            # loop's cancellation when the event is set at the same moment.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._delay):
                    await self._wake.wait()
            self._wake.clear()
            while self._queue:
                await self._export_batch()
                if len(self._queue) < self._batch:
                    break

    async def _export_batch(self) -> None:
        spans = self._take()
        parts = []
        try:
            for start in range(0, len(spans), SLICE):
                parts.append(encode_spans(spans[start : start + SLICE]))
                await asyncio.sleep(0)
        except asyncio.CancelledError:  # the loop is ending: shutdown exports them
            self._queue.extendleft(reversed(spans))
            raise
        except Exception:
            log.exception("could not encode %d spans; dropped", len(spans))
            return
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._thread, self._post, b"".join(parts))

    def _take(self) -> list[ReadableSpan]:
        spans: list[ReadableSpan] = []
        while self._queue and len(spans) < self._batch:
            try:
                spans.append(self._queue.popleft())
            except IndexError:  # taken meanwhile by a flush in another thread
                break
        return spans

    def _export_queued(self) -> bool:
        """Export everything queued, synchronously, from the calling thread."""
        ok = True
        while spans := self._take():
            ok = self._post(encode_spans(spans)).success and ok
        return ok

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._export_queued()

    def shutdown(self) -> None:
        self._shutdown = True
        if self._task is not None and not self._task.done() and not self._loop_closed():
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.shutdown(wait=True)
        self._export_queued()
        self._exporter.shutdown()  # type: ignore[no-untyped-call]
