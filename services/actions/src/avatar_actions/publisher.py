"""Sending ``AVATAR_UPDATE`` packets into LiveKit rooms, or logging them in a dry run.

:class:`LiveKitPublisher` calls ``RoomService.SendData`` through livekit-api (Twirp, a
token with ``roomAdmin`` for the room), reliable kind, with the reference payload
``{"type": "AVATAR_UPDATE", "action": ...}`` byte for byte unless a template says
otherwise. Each call is bounded by ``timeout``; 5xx answers, timeouts and connection
errors are retried with exponential
backoff and full jitter, a bounded number of times; a 4xx is final and not retried.
The server does not de-duplicate our retries (livekit-api sets a fresh nonce on every
call), so at-most-once delivery across crashes is the caller's idempotency record.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

import aiohttp
from livekit import api
from livekit.api.access_token import SIPGrants, VideoGrants
from livekit.api.room_service import RoomService
from opentelemetry import metrics, trace

from avatar_actions.ports import Packet, PublishError
from avatar_shared import semconv
from avatar_shared.retry import backoff

log = logging.getLogger(__name__)


def reference_payload(action: str) -> bytes:
    """Byte-compatible with the reference agent's ``json.dumps({...})``."""
    return json.dumps({"type": "AVATAR_UPDATE", "action": action}).encode()


class DryRunPublisher:
    """No LiveKit configured: each packet that would be sent is one JSON log line."""

    def __init__(self) -> None:
        log.warning("no LiveKit configured: dry run, packets are logged instead of sent")

    async def publish(self, packet: Packet) -> None:
        log.info(
            "dry-run packet",
            extra={"room": packet.room, "payload": reference_payload(packet.action).decode()},
        )


class LiveKitPublisher:
    def __init__(
        self,
        room_service: RoomService,
        *,
        topic: str = "",
        destinations: Sequence[str] = (),
        timeout: float = 5.0,
        retries: int = 4,
        backoff: float = 0.05,
        max_backoff: float = 2.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self._rooms = room_service
        _reuse_admin_tokens(room_service)
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
        request = api.SendDataRequest(
            room=packet.room,
            data=reference_payload(packet.action),
            kind=api.DataPacket.Kind.RELIABLE,
            destination_identities=self._destinations,
            topic=self._topic or None,
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
                try:
                    # Our own bound: livekit-api passes timeout=None per request, which
                    # disables the session's timeout in aiohttp.
                    async with asyncio.timeout(self._timeout):
                        await self._rooms.send_data(request)
                    span.set_attribute("avatar.send.attempts", attempt + 1)
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
                log.warning("SendData failed (%s), attempt %d", reason, attempt + 1)
            span.set_status(trace.Status(trace.StatusCode.ERROR, "retries exhausted"))
            raise PublishError("LiveKit unavailable after retries", permanent=False)


_TOKEN_REUSE_SECONDS = 60.0  # livekit-api signs tokens valid for 6 hours


def _reuse_admin_tokens(room_service: RoomService) -> None:
    """Sign a room's admin token once a minute, not once per packet.

    livekit-api builds and signs a fresh JWT for every call (~0.3 ms of CPU, the largest
    cost of a packet); the token for one room's ``roomAdmin`` grant is valid for hours.
    The cache is keyed by the exact grants, so any other call signs as before.
    """
    sign = room_service._auth_header
    cache: dict[str, tuple[float, dict[str, str]]] = {}

    def auth_header(grants: VideoGrants | None, sip: SIPGrants | None = None) -> dict[str, str]:
        if grants is None or sip is not None:
            return sign(grants, sip)
        key = repr(grants)
        now = time.monotonic()
        hit = cache.get(key)
        if hit is None or hit[0] < now:
            if len(cache) > 10_000:
                cache.clear()
            hit = (now + _TOKEN_REUSE_SECONDS, sign(grants, None))
            cache[key] = hit
        return hit[1]

    room_service._auth_header = auth_header  # type: ignore[method-assign]
