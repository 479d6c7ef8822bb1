"""The connection to NATS: connect, provision, publish, consume, drain.

- Connections reconnect forever with jittered waits; lame-duck notices, disconnects and
  reconnects are logged and counted (nats-py moves to another server on its own).
- :meth:`Bus.ensure_stream`, :meth:`Bus.ensure_kv` and :meth:`Bus.ensure_object_store`
  are idempotent and safe to race between replicas starting together.
- :meth:`Bus.publish` sends an event to JetStream with ``Nats-Msg-Id`` = ``event.id``, so a
  retried publish is stored once within the stream's duplicate window. It opens a PRODUCER
  span ``"<subject template> publish"`` and injects its W3C context into the headers.
- :meth:`Bus.process` handles one delivered message (:mod:`.processing`);
  :meth:`Bus.pull_feed` reads a pull consumer (:mod:`.feed`).

The raw client stays inside: services see buckets, feeds and streams, not the
connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any

import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.errors import BadRequestError, NotFoundError
from opentelemetry import metrics, trace
from opentelemetry.trace import SpanKind

from avatar_shared import semconv
from avatar_shared.bus import identities
from avatar_shared.bus.feed import PullFeed
from avatar_shared.bus.kv import Bucket
from avatar_shared.bus.objects import Objects
from avatar_shared.bus.processing import (
    Delivery,
    EventProcessor,
    Handler,
    Processed,
    event_attributes,
)
from avatar_shared.bus.streams import StreamSpec
from avatar_shared.config import ConfigError, NatsSettings
from avatar_shared.events import Event
from avatar_shared.telemetry import inject_context, tally

log = logging.getLogger(__name__)

MSG_ID_HEADER = "Nats-Msg-Id"
_STREAM_NAME_IN_USE = 10058


class BusAuthError(ConfigError):
    """The NATS server refused the connection's credentials (or their absence)."""


async def check_credentials(settings: NatsSettings, *, identity: str, wait: float = 5.0) -> None:
    """Raise :class:`BusAuthError` if NATS refuses these credentials. A NATS that does not
    answer within ``wait`` seconds is not an error here: it may come up later."""
    try:
        async with asyncio.timeout(wait):
            bus = await Bus.connect(
                settings, name=f"{identity}-credentials-check", identity=identity
            )
    except TimeoutError:
        log.warning("NATS did not answer in %.0fs: credentials not checked at start", wait)
        return
    await bus.close(drain=False)


def tls_context(settings: NatsSettings) -> ssl.SSLContext | None:
    """TLS to NATS, verifying servers against ``NATS_TLS_CA_FILE`` (else the system's)."""
    if not settings.tls_ca_file and not any(u.startswith("tls://") for u in settings.servers):
        return None
    return ssl.create_default_context(cafile=settings.tls_ca_file or None)


async def _abandon(connecting: asyncio.Future[NatsClient]) -> None:
    """Stop a connection attempt (nats-py retries for ever) and close what it opened."""
    connecting.cancel()
    await asyncio.wait([connecting], timeout=5)
    if connecting.done() and not connecting.cancelled() and connecting.exception() is None:
        await connecting.result().close()


class Bus:
    def __init__(
        self,
        nc: NatsClient,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self._nc = nc
        self._js: JetStreamContext = nc.jetstream()
        self.processor = EventProcessor(
            tracer_provider=tracer_provider, meter_provider=meter_provider
        )
        self._tracer = trace.get_tracer(
            semconv.INSTRUMENTATION_NAME, tracer_provider=tracer_provider
        )
        meter = metrics.get_meter(semconv.INSTRUMENTATION_NAME, meter_provider=meter_provider)
        self._published = tally(
            meter, semconv.METRIC_BUS_PUBLISHED, "Events published to JetStream"
        )

    @classmethod
    async def connect(
        cls,
        settings: NatsSettings,
        *,
        name: str,
        identity: str | None = None,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> Bus:
        """Connect to NATS; keeps reconnecting for as long as the process lives.

        ``identity`` is the service's NATS identity (``avatar_shared.bus.identities``):
        its replies come to its own inbox prefix. Credentials the server refuses raise
        :class:`BusAuthError` at once instead of retrying for ever."""
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

        refused: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        async def _error(exc: Exception) -> None:
            connection_events.add(1, {"event": "error"})
            message = str(exc)
            if "authorization violation" in message.lower() and not refused.done():
                refused.set_result(message)
            level = logging.ERROR if "permissions violation" in message.lower() else logging.WARNING
            described = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
            log.log(level, "nats error: %s", described, extra={"nats_event": "error"})

        connecting: asyncio.Future[NatsClient] = asyncio.ensure_future(
            nats.connect(
                servers=settings.servers,
                name=name,
                user_credentials=settings.creds_file,
                nkeys_seed=settings.nkey_seed_file,
                inbox_prefix=identities.inbox(identity) if identity else "_INBOX",
                tls=tls_context(settings),
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
        )
        waits: list[asyncio.Future[Any]] = [connecting, refused]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the caller gave up: so does the connection
            await _abandon(connecting)
            raise
        if refused.done():
            await _abandon(connecting)
            raise BusAuthError(
                f"NATS refused this service's credentials ({refused.result()}): set "
                "NATS_NKEY_SEED_FILE (or NATS_CREDS_FILE) to its identity's "
                f"(currently {settings.nkey_seed_file or settings.creds_file or 'none'})"
            )
        nc = connecting.result()
        client.append(nc)
        return cls(nc, tracer_provider=tracer_provider, meter_provider=meter_provider)

    @property
    def connected(self) -> bool:
        """Whether the connection is up now (it reconnects on its own when it is not)."""
        return bool(self._nc.is_connected)

    # --- provisioning --------------------------------------------------------------------

    async def ensure_stream(self, spec: StreamSpec) -> api.StreamInfo:
        """Create the stream, or bring an existing one to the declared configuration."""
        config = spec.config()
        try:
            return await self._js.add_stream(config)
        except BadRequestError as exc:
            if exc.err_code != _STREAM_NAME_IN_USE:
                raise
        log.info("updating stream %s to its declared configuration", spec.name)
        return await self._js.update_stream(config)

    async def create_stream_if_absent(self, config: api.StreamConfig) -> api.StreamConfig:
        """Create the stream unless it exists; the configuration it has either way.
        For streams whose configuration must not be changed once created."""
        assert config.name is not None
        try:
            return (await self._js.stream_info(config.name)).config
        except NotFoundError:
            return (await self._js.add_stream(config)).config

    async def delete_stream(self, name: str) -> None:
        await self._js.delete_stream(name)

    async def purge_stream(self, name: str) -> None:
        """Remove every message the stream holds (operations and benchmarks)."""
        await self._js.purge_stream(name)

    async def stored_messages(self, stream: str) -> int:
        return int((await self._js.stream_info(stream)).state.messages)

    async def ensure_consumer(self, stream: str, config: api.ConsumerConfig) -> api.ConsumerInfo:
        """Create a named consumer, or update its editable settings (create-or-update)."""
        if not (config.name or config.durable_name):
            raise ValueError("a provisioned consumer needs a name")
        return await self._js.add_consumer(stream, config)

    async def recreate_consumer(self, stream: str, config: api.ConsumerConfig) -> None:
        """Delete the named consumer if it exists and create it afresh: its unacked
        messages are delivered again, first, in stream order."""
        name = config.name or config.durable_name
        assert name is not None
        with contextlib.suppress(NotFoundError):
            await self._js.delete_consumer(stream, name)
        await self.ensure_consumer(stream, config)

    async def delete_consumer(self, stream: str, name: str) -> None:
        with contextlib.suppress(NotFoundError):
            await self._js.delete_consumer(stream, name)

    async def consumer_exists(self, stream: str, name: str) -> bool:
        try:
            await self._js.consumer_info(stream, name)
        except NotFoundError:
            return False
        return True

    async def ensure_kv(
        self, bucket: str, *, ttl_seconds: float, replicas: int = 1, max_value_bytes: int = -1
    ) -> Bucket:
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
            return Bucket(await self._js.create_key_value(config))
        except BadRequestError as exc:
            if exc.err_code != _STREAM_NAME_IN_USE:
                raise
        log.info("updating key-value bucket %s to its declared configuration", bucket)
        stream = (await self._js.stream_info(f"KV_{bucket}")).config
        stream.max_age = ttl_seconds
        stream.num_replicas = replicas
        stream.max_msg_size = max_value_bytes
        await self._js.update_stream(stream)
        return Bucket(await self._js.key_value(bucket))

    async def delete_kv(self, bucket: str) -> None:
        await self._js.delete_key_value(bucket)

    async def ensure_object_store(
        self, bucket: str, *, ttl_seconds: float, max_bytes: int, replicas: int = 1
    ) -> Objects:
        """Create an object store bucket, or bring an existing one to this configuration."""
        config = api.ObjectStoreConfig(
            bucket=bucket,
            ttl=ttl_seconds,
            max_bytes=max_bytes,
            replicas=replicas,
            storage=api.StorageType.FILE,
        )
        try:
            return Objects(self._js, bucket, await self._js.create_object_store(bucket, config))
        except BadRequestError as exc:
            if exc.err_code != _STREAM_NAME_IN_USE:
                raise
        log.info("updating object store %s to its declared configuration", bucket)
        stream = (await self._js.stream_info(f"OBJ_{bucket}")).config
        stream.max_age = ttl_seconds
        stream.max_bytes = max_bytes
        stream.num_replicas = replicas
        await self._js.update_stream(stream)
        return Objects(self._js, bucket, await self._js.object_store(bucket))

    async def delete_object_store(self, bucket: str) -> None:
        await self._js.delete_object_store(bucket)

    # --- messages ------------------------------------------------------------------------

    async def publish(self, event: Event) -> api.PubAck:
        """Store ``event`` in JetStream; safe to retry with the same event."""
        body = event.to_json()
        attributes = event_attributes(event, event.subject_template) | {
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
            ack = await self._js.publish(event.subject, body, headers=headers)
            span.set_attribute(semconv.DUPLICATE, bool(ack.duplicate))
        self._published.add(
            1, {semconv.EVENT_TYPE: event.type, semconv.DUPLICATE: bool(ack.duplicate)}
        )
        return ack

    async def put(
        self, subject: str, body: bytes, *, ttl_seconds: float | None = None, msg_id: str = ""
    ) -> api.PubAck:
        """Store a plain message (not an :class:`Event`): ``ttl_seconds`` is its own time
        to live (a stream with ``allow_msg_ttl``); ``msg_id`` de-duplicates a retry."""
        headers = {MSG_ID_HEADER: msg_id} if msg_id else None
        ttl = max(1, round(ttl_seconds)) if ttl_seconds is not None else None
        return await self._js.publish(subject, body, headers=headers, msg_ttl=ttl)

    async def subjects_in(self, stream: str, subjects_filter: str) -> dict[str, int]:
        """Messages per subject matching ``subjects_filter`` that ``stream`` holds now."""
        info = await self._js.stream_info(stream, subjects_filter=subjects_filter)
        return dict(info.state.subjects or {})

    async def last_on(self, stream: str, subject: str, *, direct: bool = False) -> bytes | None:
        """The body of the last message ``stream`` holds on ``subject``, if any. With
        ``direct``, by a direct get (the stream must allow it), whose API subject names
        ``subject``: an identity may be allowed it for some subjects only."""
        try:
            return (await self._js.get_last_msg(stream, subject, direct=direct)).data or b""
        except NotFoundError:
            return None

    async def read_since(
        self, stream: str, subjects_filter: str, since: datetime
    ) -> AsyncIterator[bytes]:
        """The bodies of ``stream``'s messages on the filter stored since ``since``, in
        order, up to the last one stored when reading began (an ephemeral consumer)."""
        config = api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.BY_START_TIME,
            opt_start_time=since,
            ack_policy=api.AckPolicy.NONE,
            inactive_threshold=30.0,
        )
        sub = await self._js.pull_subscribe(subjects_filter, stream=stream, config=config)
        try:
            while True:
                try:
                    messages = await sub.fetch(batch=500, timeout=1.0)
                except TimeoutError:
                    return
                for msg in messages:
                    yield msg.data
                if messages and messages[-1].metadata.num_pending == 0:
                    return
        finally:
            await sub.unsubscribe()

    async def purge_subjects(self, stream: str, subjects_filter: str) -> None:
        """Remove every message of ``stream`` on subjects matching the filter."""
        await self._js.purge_stream(stream, subject=subjects_filter)

    async def process(
        self,
        msg: Delivery,
        handler: Handler,
        *,
        consumer: str = "",
        subject: str | None = None,
        ack: bool = True,
    ) -> Processed:
        """:meth:`EventProcessor.process` with this bus's telemetry."""
        return await self.processor.process(
            msg, handler, consumer=consumer, subject=subject, ack=ack
        )

    async def subscribe(
        self, subject: str, handler: Callable[[bytes], Awaitable[None]]
    ) -> Callable[[], Awaitable[None]]:
        """Core NATS, no JetStream: each message on ``subject`` (a live feed, nothing
        stored or redelivered) goes to ``handler``; returns the unsubscribe."""
        return await self.watch(subject, lambda data, _headers: handler(data))

    async def watch(
        self,
        subject: str,
        handler: Callable[[bytes, Mapping[str, str] | None], Awaitable[None]],
    ) -> Callable[[], Awaitable[None]]:
        """Like :meth:`subscribe`, with each message's headers (its trace context)."""

        async def deliver(msg: Msg) -> None:
            await handler(msg.data, msg.headers)

        subscription = await self._nc.subscribe(subject, cb=deliver)
        return subscription.unsubscribe

    def pull_feed(self, stream: str, consumer: str, *, batch: int) -> PullFeed:
        """A feed of a pull consumer's messages (start it before taking)."""
        return PullFeed(self._nc, stream, consumer, batch=batch)

    async def close(self, *, drain: bool = True) -> None:
        """Drain subscriptions and pending publishes, then close (bounded by
        drain_timeout); ``drain=False`` closes at once (a connection that failed setup)."""
        if self._nc.is_closed:
            return
        if drain:
            await self._nc.drain()
        else:
            await self._nc.close()
