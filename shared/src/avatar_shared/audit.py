"""The audit trail: who talked to which avatar, when, for how long, and why it ended.

Every token issued or refused and every session's start and end become an audit event
(docs/audit.md), stored in their own JetStream stream, :data:`AUDIT_STREAM`, with their
own retention (``AUDIT_RETENTION_DAYS``): compliance keeps months, not the day of
``AVATAR_EVENTS``. Subjects are ``avatars.audit.v1.<type>``, outside the events stream's
``avatars.v1.>``. The events are versioned like every other contract (docs/events.md);
no secret, token or bearer credential is ever a field, and the personal data they may
hold (display names, client addresses) is recorded only when configured.

:class:`AuditTrail` publishes them from a bounded queue in batches (acks awaited
together), retrying each (with its id as ``Nats-Msg-Id``, so a retry is stored once)
until it is stored or older than ``max_wait``; what cannot be stored is counted and
logged, and never blocks a request. Events are stored in the order they happened while
NATS answers; one retried after a failure may land after later ones (each carries its
``ts``).

``python -m avatar_shared.audit`` lists the trail as JSON lines, filtered by time range,
principal, avatar and room.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
import uuid
from collections import deque
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from nats.js.errors import NotFoundError
from opentelemetry import metrics
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter
from pydantic_settings import BaseSettings, SettingsConfigDict

from avatar_shared import semconv
from avatar_shared.bus import Bus, identities
from avatar_shared.bus.identities import AUDIT_PREFIX, AUDIT_STREAM
from avatar_shared.bus.streams import StreamSpec
from avatar_shared.config import NatsSettings
from avatar_shared.events import AvatarId, RoomName
from avatar_shared.telemetry import tally

log = logging.getLogger(__name__)

#: Audit events published at once (their acks awaited together).
BATCH = 256


Principal = Annotated[str, StringConstraints(min_length=1, max_length=300)]
Reason = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]{1,64}$")]


class AuditSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AUDIT_", extra="ignore")

    retention_days: float = Field(
        180, gt=0, le=3650, description="How long the audit trail keeps its events"
    )
    max_bytes: int = Field(
        5 * 1024**3,
        ge=1024**2,
        description="Most bytes the audit trail keeps; past it the oldest events go (a flood "
        "of refused requests cannot fill the disk)",
    )
    record_names: bool = Field(
        False, description="Record participants' display names in the audit trail"
    )
    record_addresses: bool = Field(
        False, description="Record client IP addresses in the audit trail"
    )


def audit_stream(settings: AuditSettings, replicas: int = 1) -> StreamSpec:
    return StreamSpec(
        name=AUDIT_STREAM,
        subjects=(f"{AUDIT_PREFIX}.>",),
        max_age_seconds=settings.retention_days * 86_400,
        replicas=replicas,
        max_bytes=settings.max_bytes,
    )


def _utc_now() -> datetime:
    return datetime.now(UTC)


class AuditEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    v: Literal[1] = 1
    id: str = Field(default_factory=lambda: uuid.uuid4().hex, pattern=r"^[0-9a-f]{32}$")
    type: str
    ts: AwareDatetime = Field(default_factory=_utc_now)
    principal: Principal | None = Field(
        None, description="api_key:<name>, user:<id> or anonymous; unknown if refused early"
    )
    avatar_id: AvatarId | None = None
    room: RoomName | None = None

    @property
    def subject(self) -> str:
        return f"{AUDIT_PREFIX}.{self.type}"


class TokenIssued(AuditEvent):
    type: Literal["token_issued"] = "token_issued"
    identity: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    name: str | None = Field(None, max_length=256, description="only with AUDIT_RECORD_NAMES")
    client_ip: str | None = Field(None, max_length=64, description="AUDIT_RECORD_ADDRESSES")
    ttl_seconds: int = Field(ge=0)


class TokenRefused(AuditEvent):
    type: Literal["token_refused"] = "token_refused"
    status: int = Field(ge=400, le=599)
    reason: Reason = Field(description="the error code answered, e.g. too_many_sessions")
    client_ip: str | None = Field(None, max_length=64, description="AUDIT_RECORD_ADDRESSES")


class SessionStarted(AuditEvent):
    type: Literal["session_started"] = "session_started"


class SessionEnded(AuditEvent):
    type: Literal["session_ended"] = "session_ended"
    reason: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    duration_seconds: float | None = Field(None, ge=0, description="since session_started")


AnyAuditEvent = Annotated[
    TokenIssued | TokenRefused | SessionStarted | SessionEnded, Field(discriminator="type")
]
AUDIT_EVENT: TypeAdapter[AnyAuditEvent] = TypeAdapter(AnyAuditEvent)
AUDIT_TYPES = ("token_issued", "token_refused", "session_started", "session_ended")


def decode_audit(body: bytes) -> AuditEvent | None:
    try:
        return AUDIT_EVENT.validate_json(body, strict=False)
    except ValueError:
        return None


class AuditTrail:
    """Publishes audit events in order from a bounded queue (see the module docstring)."""

    def __init__(self, bus: Bus, *, max_queue: int = 10_000, max_wait: float = 300.0) -> None:
        self._bus = bus
        self._queue: deque[tuple[float, AuditEvent]] = deque()
        self._max_queue = max_queue
        self._max_wait = max_wait
        self._ready = asyncio.Event()
        self._empty = asyncio.Event()
        self._empty.set()
        self._task: asyncio.Task[None] | None = None
        self._last_drop_log: dict[str, float] = {}
        self._dropped = tally(
            metrics.get_meter(semconv.INSTRUMENTATION_NAME),
            semconv.METRIC_AUDIT_DROPPED,
            "Audit events not stored, by reason",
        )

    def record(self, event: AuditEvent) -> None:
        if len(self._queue) >= self._max_queue:
            self._drop(event, "queue_full")
            return
        self._queue.append((time.monotonic(), event))
        self._empty.clear()
        self._ready.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._publish_all(), name="audit-trail")

    async def aclose(self, flush_timeout: float = 5.0) -> None:
        """Publish what is queued (bounded), then stop."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(flush_timeout):
                await self._empty.wait()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for _, event in self._queue:
            self._drop(event, "shutdown")
        self._queue.clear()

    async def _publish_all(self) -> None:
        while True:
            if not self._queue:
                self._empty.set()
                self._ready.clear()
                await self._ready.wait()
                continue
            batch = [self._queue.popleft() for _ in range(min(BATCH, len(self._queue)))]
            now = time.monotonic()
            for _, event in (old for old in batch if now - old[0] > self._max_wait):
                self._drop(event, "timeout")
            batch = [item for item in batch if now - item[0] <= self._max_wait]
            try:
                failed = await self._put_all(batch)
            except asyncio.CancelledError:  # stopping mid-batch: counted as not stored
                self._queue.extendleft(reversed(batch))
                raise
            if failed:  # back to the front, in order, after a pause: NATS is away
                self._queue.extendleft(reversed(failed))
                await asyncio.sleep(1.0)

    async def _put_all(
        self, batch: list[tuple[float, AuditEvent]]
    ) -> list[tuple[float, AuditEvent]]:
        """Publish a batch at once (acks awaited together); what was not stored."""

        async def put(event: AuditEvent) -> None:
            await self._bus.put(event.subject, event.model_dump_json().encode(), msg_id=event.id)

        try:
            async with asyncio.timeout(5.0):
                results = await asyncio.gather(
                    *(put(event) for _, event in batch), return_exceptions=True
                )
        except TimeoutError:
            results = [TimeoutError()] * len(batch)
        failed = [item for item, result in zip(batch, results, strict=True) if result is not None]
        if failed:
            log.warning(
                "audit events not stored yet, retrying",
                extra={"count": len(failed), "error": str(results[0])[:200]},
            )
        return failed

    def _drop(self, event: AuditEvent, reason: str) -> None:
        """Counted always; logged at most once a minute per reason (a flood is one line)."""
        self._dropped.add(1, {semconv.REASON: reason})
        now = time.monotonic()
        if now - self._last_drop_log.get(reason, -60.0) >= 60.0:
            self._last_drop_log[reason] = now
            log.error(
                "audit events dropped (avatar.audit.dropped counts them)",
                extra={"reason": reason, "audit_type": event.type},
            )


# --- python -m avatar_shared.audit ---------------------------------------------------------


def _time(value: str) -> datetime:
    """An ISO time (UTC if it names no zone) or a span back from now: 15m, 2h, 7d."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
    if value[-1:] in units and value[:-1].isdigit():
        return datetime.now(UTC) - timedelta(seconds=int(value[:-1]) * units[value[-1]])
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def with_principal(event: AuditEvent, principals: dict[str, str]) -> AuditEvent:
    """A session event names the principal of its room's token when it was listed before
    it (sessions under a quota carry it themselves)."""
    if isinstance(event, TokenIssued) and event.room and event.principal:
        principals[event.room] = event.principal
    elif event.principal is None and event.room in principals:
        return event.model_copy(update={"principal": principals[event.room]})
    return event


def matches(event: AuditEvent, args: argparse.Namespace) -> bool:
    return (
        (args.until is None or event.ts <= args.until)
        and (args.principal is None or event.principal == args.principal)
        and (args.avatar is None or event.avatar_id == args.avatar)
        and (args.room is None or event.room == args.room)
        and (args.type is None or event.type == args.type)
    )


async def _list(args: argparse.Namespace) -> int:
    bus = await Bus.connect(NatsSettings(), name="avatar-audit", identity=identities.ADMIN)
    principals: dict[str, str] = {}  # room -> who was issued its token
    try:
        async for body in bus.read_since(AUDIT_STREAM, f"{AUDIT_PREFIX}.>", args.since):
            event = decode_audit(body)
            if event is None:
                continue
            event = with_principal(event, principals)
            if matches(event, args):
                sys.stdout.write(event.model_dump_json() + "\n")
    except NotFoundError:
        print(f"error: no {AUDIT_STREAM} stream: nothing was audited yet", file=sys.stderr)
        return 1
    finally:
        await bus.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m avatar_shared.audit",
        description="List the audit trail as JSON lines (NATS_URL, NATS_NKEY_SEED_FILE).",
    )
    parser.add_argument("--since", type=_time, default=_time("1d"), help="ISO time or 15m/2h/7d")
    parser.add_argument("--until", type=_time, default=None, help="ISO time or 15m/2h/7d")
    parser.add_argument("--principal", help="api_key:<name>, user:<id> or anonymous")
    parser.add_argument("--avatar", help="avatar id")
    parser.add_argument("--room", help="room name")
    parser.add_argument("--type", choices=AUDIT_TYPES)
    return asyncio.run(_list(parser.parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
