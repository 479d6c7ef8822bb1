"""The one place that talks to NATS: connect, provision, publish, process, drain.

- Connections reconnect forever with jittered waits; lame-duck notices, disconnects and
  reconnects are logged and counted (nats-py moves to another server on its own).
- :meth:`Bus.ensure_stream`, :meth:`Bus.ensure_consumer` and :meth:`Bus.ensure_kv` are
  idempotent and safe to race between replicas starting together.
- :meth:`Bus.publish` sends an event to JetStream with ``Nats-Msg-Id`` = ``event.id``, so a
  retried publish is stored once within the stream's duplicate window. It opens a PRODUCER
  span ``"<subject template> publish"`` and injects its W3C context into the headers.
- :meth:`Bus.process` handles one delivered message: a CONSUMER span
  ``"<subject template> process"`` whose parent is the producer's span, tolerant decoding,
  then ack on success, ``nak`` (redelivery) when the handler fails, and ``term`` plus a
  logged, counted drop for a message that can never be valid.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.errors import BadRequestError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore
from opentelemetry import metrics, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from avatar_shared import semconv, subjects
from avatar_shared.config import NatsSettings
from avatar_shared.events import Event, InvalidEvent, decode_event
from avatar_shared.telemetry import extract_context, inject_context, tally

log = logging.getLogger(__name__)

MSG_ID_HEADER = "Nats-Msg-Id"
_STREAM_NAME_IN_USE = 10058
NAK_DELAY_SECONDS = 1.0

Handler = Callable[[Event], Awaitable[None]]
Processed = Literal["ok", "invalid", "ignored", "error"]


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """A JetStream stream this project owns, declared in code and provisioned at start."""

    name: str
    subjects: tuple[str, ...]
    duplicate_window_seconds: float = 120.0
    max_age_seconds: float = 24 * 3600.0
    replicas: int = 1

    def config(self) -> api.StreamConfig:
        return api.StreamConfig(
            name=self.name,
            subjects=list(self.subjects),
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE,
            duplicate_window=self.duplicate_window_seconds,
            max_age=self.max_age_seconds,
            num_replicas=self.replicas,
        )


def events_stream(replicas: int = 1) -> StreamSpec:
    """The stream that stores every event of the current contract version."""
    return StreamSpec(
        name=subjects.EVENTS_STREAM, subjects=subjects.EVENTS_STREAM_SUBJECTS, replicas=replicas
    )


class Bus:
    def __init__(
        self,
        nc: NatsClient,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self._tracer = trace.get_tracer(
            semconv.INSTRUMENTATION_NAME, tracer_provider=tracer_provider
        )
        meter = metrics.get_meter(semconv.INSTRUMENTATION_NAME, meter_provider=meter_provider)
        self._published = tally(
            meter, semconv.METRIC_BUS_PUBLISHED, "Events published to JetStream"
        )
        self._consumed = tally(meter, semconv.METRIC_BUS_CONSUMED, "Events processed, by outcome")
        self._dropped = meter.create_counter(
            semconv.METRIC_BUS_DROPPED, description="Messages dropped as invalid, by reason"
        )

    @classmethod
    async def connect(
        cls,
        settings: NatsSettings,
        *,
        name: str,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> Bus:
        """Connect to NATS; keeps reconnecting for as long as the process lives."""
        meter = metrics.get_meter(semconv.INSTRUMENTATION_NAME, meter_provider=meter_provider)
        connection_events = meter.create_counter(
            semconv.METRIC_BUS_CONNECTION_EVENTS, description="NATS connection state changes"
        )

        client: list[NatsClient] = []

        def _callback(kind: str, level: int) -> Callable[[], Awaitable[None]]:
            async def _log() -> None:
                # Draining on shutdown disconnects too; that one is not worth a warning.
                draining = bool(client) and (client[0].is_draining or client[0].is_closed)
                connection_events.add(1, {"event": kind})
                log.log(
                    logging.INFO if draining else level,
                    "nats connection %s",
                    kind,
                    extra={"nats_event": kind},
                )

            return _log

        async def _error(exc: Exception) -> None:
            connection_events.add(1, {"event": "error"})
            log.warning("nats error: %s", exc, extra={"nats_event": "error"})

        nc = await nats.connect(
            servers=settings.servers,
            name=name,
            user_credentials=settings.creds_file,
            connect_timeout=settings.connect_timeout,
            drain_timeout=int(settings.drain_timeout),
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            disconnected_cb=_callback("disconnected", logging.WARNING),
            reconnected_cb=_callback("reconnected", logging.INFO),
            closed_cb=_callback("closed", logging.INFO),
            lame_duck_mode_cb=_callback("lame_duck", logging.WARNING),
            error_cb=_error,
        )
        client.append(nc)
        return cls(nc, tracer_provider=tracer_provider, meter_provider=meter_provider)

    async def ensure_stream(self, spec: StreamSpec) -> api.StreamInfo:
        """Create the stream, or bring an existing one to the declared configuration."""
        config = spec.config()
        try:
            return await self.js.add_stream(config)
        except BadRequestError as exc:
            if exc.err_code != _STREAM_NAME_IN_USE:
                raise
        log.info("updating stream %s to its declared configuration", spec.name)
        return await self.js.update_stream(config)

    async def ensure_consumer(self, stream: str, config: api.ConsumerConfig) -> api.ConsumerInfo:
        """Create a named consumer, or update its editable settings (create-or-update)."""
        if not (config.name or config.durable_name):
            raise ValueError("a provisioned consumer needs a name")
        return await self.js.add_consumer(stream, config)

    async def ensure_kv(
        self, bucket: str, *, ttl_seconds: float, replicas: int = 1, max_value_bytes: int = -1
    ) -> KeyValue:
        """Create a key-value bucket, or bring an existing one to this configuration."""
        config = api.KeyValueConfig(
            bucket=bucket,
            ttl=ttl_seconds,
            history=1,
            replicas=replicas,
            storage=api.StorageType.FILE,
            max_value_size=max_value_bytes,
        )
        try:
            return await self.js.create_key_value(config)
        except BadRequestError as exc:
            if exc.err_code != _STREAM_NAME_IN_USE:
                raise
        log.info("updating key-value bucket %s to its declared configuration", bucket)
        info = await self.js.stream_info(f"KV_{bucket}")
        stream = info.config
        stream.max_age = ttl_seconds
        stream.num_replicas = replicas
        stream.max_msg_size = max_value_bytes
        await self.js.update_stream(stream)
        return await self.js.key_value(bucket)

    async def ensure_object_store(
        self, bucket: str, *, ttl_seconds: float, max_bytes: int, replicas: int = 1
    ) -> ObjectStore:
        """Create an object store bucket, or bring an existing one to this configuration."""
        config = api.ObjectStoreConfig(
            bucket=bucket,
            ttl=ttl_seconds,
            max_bytes=max_bytes,
            replicas=replicas,
            storage=api.StorageType.FILE,
        )
        try:
            return await self.js.create_object_store(bucket, config)
        except BadRequestError as exc:
            if exc.err_code != _STREAM_NAME_IN_USE:
                raise
        log.info("updating object store %s to its declared configuration", bucket)
        stream = (await self.js.stream_info(f"OBJ_{bucket}")).config
        stream.max_age = ttl_seconds
        stream.max_bytes = max_bytes
        stream.num_replicas = replicas
        await self.js.update_stream(stream)
        return await self.js.object_store(bucket)

    @property
    def connected(self) -> bool:
        """Whether the connection is up now (it reconnects on its own when it is not)."""
        return bool(self.nc.is_connected)

    async def publish(self, event: Event) -> api.PubAck:
        """Store ``event`` in JetStream; safe to retry with the same event."""
        body = event.to_json()
        attributes = _event_attributes(event, event.subject_template) | {
            semconv.MESSAGING_OPERATION_TYPE: "send",
            semconv.MESSAGING_OPERATION_NAME: "publish",
            semconv.MESSAGING_DESTINATION_NAME: event.subject,
            semconv.MESSAGING_MESSAGE_BODY_SIZE: len(body),
        }
        with self._tracer.start_as_current_span(
            f"{event.subject_template} publish", kind=SpanKind.PRODUCER, attributes=attributes
        ) as span:
            headers = {MSG_ID_HEADER: event.id}
            inject_context(headers)
            ack = await self.js.publish(event.subject, body, headers=headers)
            span.set_attribute(semconv.DUPLICATE, bool(ack.duplicate))
        self._published.add(
            1, {semconv.EVENT_TYPE: event.type, semconv.DUPLICATE: bool(ack.duplicate)}
        )
        return ack

    async def process(
        self,
        msg: Msg,
        handler: Handler,
        *,
        consumer: str = "",
        subject: str | None = None,
        ack: bool = True,
    ) -> Processed:
        """Decode one JetStream message, run ``handler`` on it, then settle the message.

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
            attributes.update(_event_attributes(event, template))
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
                log.exception("handler failed; message will be redelivered", extra=_ids(event))
                self._consumed.add(1, {semconv.EVENT_TYPE: event.type, semconv.OUTCOME: "error"})
                await msg.nak(delay=NAK_DELAY_SECONDS)
                return "error"
            if ack:
                await msg.ack()
            self._consumed.add(1, {semconv.EVENT_TYPE: event.type, semconv.OUTCOME: "ok"})
            return "ok"

    async def _drop(self, msg: Msg, span: trace.Span, *, reason: str, detail: str) -> None:
        span.set_status(Status(StatusCode.ERROR, reason))
        span.set_attribute(semconv.REASON, reason)
        self._dropped.add(1, {semconv.REASON: reason})
        log.warning(
            "dropped message: %s",
            detail,
            extra={"reason": reason, "subject": msg.subject, "size": len(msg.data)},
        )
        await msg.term()

    async def close(self) -> None:
        """Drain subscriptions and pending publishes, then close (bounded by drain_timeout)."""
        if not self.nc.is_closed:
            await self.nc.drain()


def _event_attributes(event: Event, template: str) -> dict[str, str | int | bool]:
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
    return attributes


def _ids(event: Event) -> dict[str, str]:
    return {"event_id": event.id, "event_type": event.type}
