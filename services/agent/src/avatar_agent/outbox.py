"""Events from one conversation to the bus, without ever making speech wait.

The voice pipeline calls :meth:`EventOutbox.emit`, which never blocks and never raises:
it stamps the event (room, avatar, per-room ``seq``) and queues it with the trace context
it was emitted in. One task publishes the queue in order. A failed publish is retried
with backoff for up to ``max_wait`` seconds after the event was emitted, with the same
event id (the ``Nats-Msg-Id``), so a publish that did land is stored once. Past that
bound, or when the queue is full, events are dropped: logged, counted by reason, never
silently. ``seq`` still counts dropped events, so a consumer can see the gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import metrics

from avatar_shared import semconv
from avatar_shared.events import Event
from avatar_shared.retry import backoff

log = logging.getLogger(__name__)

E = TypeVar("E", bound=Event)


class Publisher(Protocol):
    async def publish(self, event: Event) -> Any: ...


#: Where an event's publish span goes: a context, or one found at publish time (a span
#: that did not exist yet when the event was emitted, e.g. the session's).
TraceParent = otel_context.Context | Callable[[], otel_context.Context | None]


@dataclass(frozen=True, slots=True)
class _Queued:
    event: Event
    parent: TraceParent
    emitted_at: float

    @property
    def context(self) -> otel_context.Context:
        if callable(self.parent):
            return self.parent() or otel_context.Context()
        return self.parent


class EventOutbox:
    def __init__(
        self,
        bus: Publisher,
        *,
        room: str,
        avatar_id: str | None,
        max_queue: int = 1000,
        max_wait: float = 30.0,
        retry_base: float = 0.1,
        retry_max: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self.room = room
        self.avatar_id = avatar_id
        self._bus = bus
        self._queue: asyncio.Queue[_Queued] = asyncio.Queue(max_queue)
        self._max_wait = max_wait
        self._retry_base = retry_base
        self._retry_max = retry_max
        self._clock = clock
        self._seq = 0
        self._task: asyncio.Task[None] | None = None
        self._in_flight: _Queued | None = None
        meter = metrics.get_meter(semconv.INSTRUMENTATION_NAME, meter_provider=meter_provider)
        self._dropped = meter.create_counter(
            semconv.METRIC_AGENT_EVENTS_DROPPED,
            description="Agent events not published, by reason",
        )
        self._queued = meter.create_up_down_counter(
            semconv.METRIC_AGENT_EVENTS_QUEUED, description="Agent events waiting to publish"
        )
        self.dropped = 0

    def emit(self, model: type[E], *, parent: TraceParent | None = None, **fields: Any) -> E | None:
        """Queue one event; returns it, or None if it could not be built or queued. Its
        publish span is a child of ``parent`` (default: the span current now)."""
        try:
            event = model(room=self.room, avatar_id=self.avatar_id, seq=self._seq, **fields)
        except ValueError:  # a bug on our side: say so loudly, keep the call going
            log.exception("invalid %s event not emitted", model.__name__)
            self._drop(model.__name__, "invalid")
            return None
        self._seq += 1
        try:
            context = parent if parent is not None else otel_context.get_current()
            self._queue.put_nowait(_Queued(event, context, self._clock()))
        except asyncio.QueueFull:
            self._drop(event.type, "queue_full", event)
            return None
        self._queued.add(1)
        return event

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"event-outbox:{self.room}")

    async def aclose(self, flush_seconds: float = 5.0) -> None:
        """Publish what is queued, for at most ``flush_seconds``; drop the rest."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), flush_seconds)
        lost = self._in_flight  # suspended mid-publish: cancelling it loses the event
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if lost is not None:
            self._drop(lost.event.type, "shutdown", lost.event)
        while not self._queue.empty():
            item = self._queue.get_nowait()
            self._queued.add(-1)
            self._drop(item.event.type, "shutdown", item.event)

    async def _run(self) -> None:
        while True:
            item = self._in_flight = await self._queue.get()
            try:
                await self._publish(item)
            finally:
                self._in_flight = None
                self._queued.add(-1)
                self._queue.task_done()

    async def _publish(self, item: _Queued) -> None:
        attempt = 0
        while True:
            token = otel_context.attach(item.context)
            budget = self._max_wait - (self._clock() - item.emitted_at)
            try:
                await asyncio.wait_for(self._bus.publish(item.event), max(budget, 0.05))
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = str(exc) or "no answer from NATS in time"
                waited = self._clock() - item.emitted_at
                if waited >= self._max_wait:
                    self._drop(item.event.type, "timeout", item.event, error)
                    return
                if attempt == 0:
                    log.warning("publishing %s failed, retrying: %s", item.event.type, error)
            finally:
                otel_context.detach(token)
            delay = backoff(attempt, base=self._retry_base, cap=self._retry_max)
            attempt += 1
            await asyncio.sleep(min(delay, max(0.0, self._max_wait - waited)))

    def _drop(
        self, event_type: str, reason: str, event: Event | None = None, error: str | None = None
    ) -> None:
        self.dropped += 1
        self._dropped.add(1, {semconv.EVENT_TYPE: event_type, semconv.REASON: reason})
        log.warning(
            "event dropped",
            extra={
                "reason": reason,
                "event_type": event_type,
                "event_id": event.id if event else None,
                "seq": event.seq if event else None,
                "room": self.room,
                "error": error,
            },
        )
