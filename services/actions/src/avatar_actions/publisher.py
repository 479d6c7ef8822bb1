"""Sending ``AVATAR_UPDATE`` packets into LiveKit rooms, or logging them in a dry run.

:class:`LiveKitPublisher` calls ``RoomService.SendData`` (Twirp ``POST
/twirp/livekit.RoomService/SendData``, the real ``livekit-protocol`` messages, a token with
``roomAdmin`` for the room), reliable kind, with the reference payload
``{"type": "AVATAR_UPDATE", "action": ...}`` byte for byte. Each packet carries its own
nonce (:attr:`Packet.nonce`, derived from what the packet is): livekit-server drops a
packet whose nonce is among the last 100 it saw in the room, so every retry, every
redelivery and every successor's resend of one packet is delivered once.
livekit-api's ``RoomService.send_data`` replaces the nonce with a random one on every
call, so the call is made here, through livekit-api's own Twirp client and access
tokens; everything else stays livekit-api's.

Each call is bounded by ``timeout``; 5xx answers, timeouts and connection errors are
retried with exponential backoff and full jitter, a bounded number of times; a 4xx is
final and not retried. At most ``concurrency`` calls are in flight (the HTTP
connections). A packet is sent only if it can still arrive by its deadline: one that
has waited for a connection or a retry until less time remains than calls take now
(:class:`Transit`) is not sent (:class:`~avatar_actions.ports.TooLate`). Under overload
the service sheds rather than delivers late.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta

import aiohttp
from google.protobuf.message import DecodeError
from livekit import api
from livekit.api.twirp_client import TwirpClient
from livekit.protocol.room import SendDataRequest, SendDataResponse
from opentelemetry import metrics, trace

from avatar_actions.ports import Packet, PublishError, TooLate
from avatar_shared import semconv
from avatar_shared.retry import backoff

log = logging.getLogger(__name__)

#: An admin token is signed once per room and minute (signing is the largest CPU cost
#: of a packet), and is valid for ten.
_TOKEN_REUSE_SECONDS = 60.0
_TOKEN_TTL = timedelta(minutes=10)
#: SendData calls in flight at once (and HTTP connections to LiveKit).
SEND_CONCURRENCY = 64


class Transit:
    """How long a ``SendData`` takes to be answered now: the slowest answer of the last
    ``window`` seconds, at most ``cap``. A packet with less time left than that would
    arrive after its deadline. The cap keeps one very slow answer from shedding every
    packet for a whole window; calls that failed are not counted (they say nothing
    about when a packet arrives)."""

    def __init__(self, cap: float, window: float = 5.0) -> None:
        self._cap = cap
        self._window = window
        #: (when, seconds) of recent answers, slowest first: each entry is slower than
        #: every later one, so the first one standing is the window's slowest.
        self._slowest: deque[tuple[float, float]] = deque()

    def record(self, now: float, seconds: float) -> None:
        while self._slowest and self._slowest[-1][1] <= seconds:
            self._slowest.pop()
        self._slowest.append((now, seconds))

    def estimate(self, now: float) -> float:
        while self._slowest and self._slowest[0][0] < now - self._window:
            self._slowest.popleft()
        return min(self._cap, self._slowest[0][1]) if self._slowest else 0.0


def reference_payload(action: str) -> bytes:
    """Byte-compatible with the reference agent's ``json.dumps({...})``."""
    return json.dumps({"type": "AVATAR_UPDATE", "action": action}).encode()


class DryRunPublisher:
    """No LiveKit configured: each packet that would be sent is one JSON log line, under
    a span of its own (``dry-run SendData``), so a trace shows where the packet went."""

    announces = False

    def __init__(self, *, tracer_provider: trace.TracerProvider | None = None) -> None:
        self._tracer = trace.get_tracer(
            semconv.INSTRUMENTATION_NAME, tracer_provider=tracer_provider
        )
        log.warning("no LiveKit configured: dry run, packets are logged instead of sent")

    async def publish(self, packet: Packet) -> None:
        attributes = {semconv.ROOM: packet.room, semconv.ACTION: packet.action}
        with self._tracer.start_as_current_span(
            "dry-run SendData", kind=trace.SpanKind.CLIENT, attributes=attributes
        ):
            log.info(
                "dry-run packet",
                extra={
                    "room": packet.room,
                    "payload": reference_payload(packet.action).decode(),
                    "nonce": packet.nonce.hex(),
                },
            )


class AdminTokens:
    """``roomAdmin`` tokens for one room at a time, signed once a minute per room."""

    def __init__(self, api_key: str, api_secret: str, max_rooms: int = 10_000) -> None:
        self._key = api_key
        self._secret = api_secret
        self._max_rooms = max_rooms
        self._cache: dict[str, tuple[float, str]] = {}

    def header(self, room: str) -> dict[str, str]:
        now = time.monotonic()
        hit = self._cache.get(room)
        if hit is None or hit[0] < now:
            if len(self._cache) >= self._max_rooms:
                self._cache.clear()
            token = (
                api.AccessToken(self._key, self._secret)
                .with_grants(api.VideoGrants(room_admin=True, room=room))
                .with_ttl(_TOKEN_TTL)
                .to_jwt()
            )
            hit = (now + _TOKEN_REUSE_SECONDS, token)
            self._cache[room] = hit
        return {"Authorization": f"Bearer {hit[1]}"}


class LiveKitPublisher:
    announces = False

    def __init__(
        self,
        url: str,
        api_key: str,
        api_secret: str,
        session: aiohttp.ClientSession,
        *,
        topic: str = "",
        destinations: Sequence[str] = (),
        timeout: float = 5.0,
        retries: int = 4,
        backoff: float = 0.05,
        max_backoff: float = 2.0,
        concurrency: int = SEND_CONCURRENCY,
        max_transit: float = 0.2,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self._twirp = TwirpClient(session, url, "livekit", failover=False)
        self._slots = asyncio.Semaphore(concurrency)
        self._transit = Transit(max_transit)
        self._clock = clock
        self._tokens = AdminTokens(api_key, api_secret)
        self._topic = topic
        self._destinations = list(destinations)
        self._timeout = timeout
        self._retries = retries
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._sleep = sleep
        self._tracer = trace.get_tracer("avatar_actions", tracer_provider=tracer_provider)
        meter = metrics.get_meter("avatar_actions", meter_provider=meter_provider)
        self._retried = meter.create_counter(
            semconv.METRIC_ACTIONS_SEND_RETRIES, description="SendData calls retried"
        )

    async def publish(self, packet: Packet) -> None:
        async with self._slots:
            await self._send(packet)

    async def _send(self, packet: Packet) -> None:
        request = SendDataRequest(
            room=packet.room,
            data=reference_payload(packet.action),
            kind=api.DataPacket.Kind.RELIABLE,
            destination_identities=self._destinations,
            topic=self._topic or None,
            nonce=packet.nonce,
        )
        with self._tracer.start_as_current_span(
            "livekit.RoomService/SendData",
            kind=trace.SpanKind.CLIENT,
            attributes={
                "rpc.system": "twirp",
                "rpc.service": "livekit.RoomService",
                "rpc.method": "SendData",
                semconv.ROOM: packet.room,
            },
        ) as span:
            for attempt in range(self._retries + 1):
                if attempt:
                    self._retried.add(1)
                    await self._sleep(
                        backoff(attempt, base=self._backoff, cap=self._max_backoff, jitter=1.0)
                    )
                started = self._clock()
                if started + self._transit.estimate(started) > packet.deadline:
                    span.set_attribute(semconv.OUTCOME, "stale")
                    raise TooLate
                authorization = self._tokens.header(packet.room)
                try:
                    async with asyncio.timeout(self._timeout):
                        await self._twirp.request(
                            "RoomService", "SendData", request, authorization, SendDataResponse
                        )
                    answered = self._clock()
                    self._transit.record(answered, answered - started)
                    span.set_attribute(semconv.SEND_ATTEMPTS, attempt + 1)
                    return
                except api.ServerError as exc:
                    if exc.status < 500:
                        log.error(
                            "LiveKit refused SendData (%s %s): not retried",
                            exc.status,
                            exc.code,
                            extra={"room": packet.room},
                        )
                        span.set_status(trace.Status(trace.StatusCode.ERROR, exc.code))
                        raise PublishError(
                            f"LiveKit answered {exc.status}", permanent=True
                        ) from exc
                    reason = f"{exc.status} {exc.code}"
                except (aiohttp.ClientError, TimeoutError) as exc:
                    reason = type(exc).__name__
                except (DecodeError, AttributeError, ValueError) as exc:
                    # An answer livekit-api cannot read: a 200 that is not a
                    # SendDataResponse (a proxy's HTML page), an error body that is JSON
                    # but not an object. Not LiveKit's word on the packet: retried.
                    reason = f"unreadable answer ({type(exc).__name__})"
                log.warning("SendData failed (%s), attempt %d", reason, attempt + 1)
            span.set_status(trace.Status(trace.StatusCode.ERROR, "retries exhausted"))
            raise PublishError("LiveKit unavailable after retries", permanent=False)
