"""Handling one delivered message: decode, trace, run the handler, settle.

:class:`EventProcessor` needs no connection: it works on anything shaped like a
delivered JetStream message (:class:`Delivery`), so the same code runs on a real
consumer and on the in-memory fakes of unit tests. It opens a CONSUMER span
``"<subject template> process"`` whose parent is the producer's span (W3C context from
the headers), decodes tolerantly, then acks on success, ``nak``s (redelivery) when the
handler fails, and ``term``s a message that can never be valid, with a logged, counted
drop.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Literal, Protocol

from opentelemetry import metrics, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from avatar_shared import semconv, subjects
from avatar_shared.events import ActionDecision, Event, InvalidEvent, decode_event
from avatar_shared.telemetry import extract_context, tally

log = logging.getLogger(__name__)

NAK_DELAY_SECONDS = 1.0

Handler = Callable[[Event], Awaitable[None]]
Processed = Literal["ok", "invalid", "ignored", "error"]


class Delivery(Protocol):
    """A message delivered by a JetStream consumer, to be settled once."""

    @property
    def subject(self) -> str: ...

    @property
    def data(self) -> bytes: ...

    @property
    def headers(self) -> Mapping[str, str] | None: ...

    async def ack(self) -> None: ...

    async def nak(self, delay: float | None = None) -> None: ...

    async def term(self) -> None: ...


def event_attributes(event: Event, template: str) -> dict[str, str | int | bool]:
    attributes: dict[str, str | int | bool] = {
        semconv.MESSAGING_SYSTEM: semconv.MESSAGING_SYSTEM_NATS,
        semconv.MESSAGING_DESTINATION_TEMPLATE: template,
        semconv.MESSAGING_MESSAGE_ID: event.id,
        semconv.EVENT_TYPE: event.type,
        semconv.EVENT_SEQ: event.seq,
        semconv.ROOM: event.room,
    }
    if event.avatar_id:
        attributes[semconv.AVATAR_ID] = event.avatar_id
    if event.speech_id:
        attributes[semconv.SPEECH_ID] = event.speech_id
    if isinstance(event, ActionDecision):  # what a trace view filters on: drops and why
        attributes[semconv.ACTION] = event.action
        attributes[semconv.OUTCOME] = str(event.outcome)
        if event.reason is not None:
            attributes[semconv.REASON] = str(event.reason)
    return attributes


class EventProcessor:
    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self._tracer = trace.get_tracer(
            semconv.INSTRUMENTATION_NAME, tracer_provider=tracer_provider
        )
        meter = metrics.get_meter(semconv.INSTRUMENTATION_NAME, meter_provider=meter_provider)
        self._consumed = tally(meter, semconv.METRIC_BUS_CONSUMED, "Events processed, by outcome")
        self._dropped = meter.create_counter(
            semconv.METRIC_BUS_DROPPED, description="Messages dropped as invalid, by reason"
        )

    async def process(
        self,
        msg: Delivery,
        handler: Handler,
        *,
        consumer: str = "",
        subject: str | None = None,
        ack: bool = True,
    ) -> Processed:
        """Decode one message, run ``handler`` on it, then settle the message.

        ``subject`` is the event subject the message was published on, when the stream it
        is read from stores it under another one (a subject transform). With
        ``ack=False`` a handled message is left unacknowledged for the caller to ack once
        the handler's effect is durable. Returns what happened: ``ok`` (handled; acked unless
        ``ack=False``), ``invalid`` (dropped: ``term``), ``ignored`` (an event type this
        contract version does not know: acked) or ``error`` (the handler raised: ``nak``).
        """
        subject = subject or msg.subject
        event: Event | None = None
        problem: str | None = None
        try:
            parts: subjects.SubjectParts | None = subjects.parse_subject(subject)
        except ValueError:
            parts, problem = None, "subject is not an event subject of this contract"
        template = subjects.subject_template(parts.source, parts.type) if parts else subject
        if parts is not None:
            try:
                event = decode_event(msg.data)
            except InvalidEvent as exc:
                problem = str(exc)
            if event is not None and (event.source, event.type, event.room) != (
                parts.source,
                parts.type,
                parts.room,
            ):
                event, problem = None, "event does not match the subject it arrived on"
        attributes: dict[str, str | int | bool] = {
            semconv.MESSAGING_SYSTEM: semconv.MESSAGING_SYSTEM_NATS,
            semconv.MESSAGING_OPERATION_TYPE: "process",
            semconv.MESSAGING_OPERATION_NAME: "process",
            semconv.MESSAGING_DESTINATION_NAME: subject,
            semconv.MESSAGING_DESTINATION_TEMPLATE: template,
            semconv.MESSAGING_MESSAGE_BODY_SIZE: len(msg.data),
        }
        if consumer:
            attributes[semconv.MESSAGING_CONSUMER_GROUP_NAME] = consumer
        if event is not None:
            attributes.update(event_attributes(event, template))
        with self._tracer.start_as_current_span(
            f"{template} process",
            context=extract_context(msg.headers),
            kind=SpanKind.CONSUMER,
            attributes=attributes,
        ) as span:
            if problem is not None:
                await self._drop(msg, span, reason="invalid", detail=problem)
                return "invalid"
            if event is None:
                self._consumed.add(1, {semconv.OUTCOME: "ignored"})
                await msg.ack()
                return "ignored"
            try:
                await handler(event)
            except Exception as exc:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                log.exception(
                    "handler failed; message will be redelivered",
                    extra={"event_id": event.id, "event_type": event.type},
                )
                self._consumed.add(1, {semconv.EVENT_TYPE: event.type, semconv.OUTCOME: "error"})
                await msg.nak(delay=NAK_DELAY_SECONDS)
                return "error"
            if ack:
                await msg.ack()
            self._consumed.add(1, {semconv.EVENT_TYPE: event.type, semconv.OUTCOME: "ok"})
            return "ok"

    async def _drop(self, msg: Delivery, span: trace.Span, *, reason: str, detail: str) -> None:
        span.set_status(Status(StatusCode.ERROR, reason))
        span.set_attribute(semconv.REASON, reason)
        self._dropped.add(1, {semconv.REASON: reason})
        log.warning(
            "dropped message: %s",
            detail,
            extra={"reason": reason, "subject": msg.subject, "size": len(msg.data)},
        )
        await msg.term()
