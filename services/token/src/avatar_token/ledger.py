"""Concurrent sessions, counted for the whole deployment on the bus: the quotas.

Each session holds a *slot*: one message in the JetStream stream ``AVATAR_SESSIONS`` on
``avatars.sessions.v1.<room>.<principal>.<avatar>`` (room encoded as every subject
encodes it, principal as a hash; its body says who and what in clear), with a time to
live of its own (``Nats-TTL``) and at most one message per subject:

- a token issued takes a slot for ``TOKEN_SESSION_START_SECONDS`` (the session must start
  within it, or the slot frees itself);
- the agent's ``session_started`` renews it for the session's maximum length plus a
  minute, so an agent that crashes cannot hold it for ever;
- ``session_ended`` removes it (a purge of its subject) and leaves a record of it for the
  start window, on ``<slot subject>.ended``, which no quota counts: a room the caller
  named may hold one session after another, and a token whose session ended may start
  another there within its start window. That session's ``session_started`` takes its
  slot again from the record, so it is counted like the first. Another caller's slot
  for the same room, whose session has not started, is not the ended session's and stays.

Counting is one ``STREAM.INFO`` with a subject filter per quota (the whole deployment,
the principal, the avatar): the stream holds the truth, whichever replica answers.
Two replicas counting at the same moment can both admit the last free slot: the window
is the time between a count and the slot's write, one NATS round trip (about a
millisecond); documented in docs/token.md.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import uuid
from dataclasses import asdict, dataclass

from nats.js import api

from avatar_shared.audit import AuditTrail, SessionEnded, SessionStarted
from avatar_shared.bus import Bus
from avatar_shared.bus.feed import Delivered
from avatar_shared.bus.identities import SESSIONS_PREFIX, SESSIONS_STREAM, TOKEN_CONSUMERS
from avatar_shared.bus.streams import StreamSpec
from avatar_shared.events import InvalidEvent, decode_event
from avatar_shared.events import SessionEnded as AgentSessionEnded
from avatar_shared.events import SessionStarted as AgentSessionStarted
from avatar_shared.rooms import encode_room
from avatar_shared.subjects import EVENTS_STREAM, PREFIX
from avatar_shared.web.errors import ApiError
from avatar_token.sessions import Session

log = logging.getLogger(__name__)

#: A started session's slot outlives its maximum length by this much.
GRACE_SECONDS = 60.0
#: What a refused caller is told to wait: a slot frees when some session ends.
RETRY_AFTER_SECONDS = 30
#: The last token of an ended slot's record: a fourth token, so no quota counts it.
ENDED = "ended"


def principal_key(principal: str) -> str:
    """A subject-safe, fixed-length name for a principal (its ref can hold anything)."""
    return hashlib.sha256(principal.encode()).hexdigest()[:32]


def slot_subject(room: str, principal: str, avatar_id: str) -> str:
    return f"{SESSIONS_PREFIX}.{encode_room(room)}.{principal_key(principal)}.{avatar_id}"


def quota_filters(session: Session) -> list[tuple[str, int, str]]:
    """(which quota, its limit, the slots it counts) for each quota that applies."""
    life = session.lifecycle
    quotas = [
        ("deployment", life.max_sessions, f"{SESSIONS_PREFIX}.*.*.*"),
        (
            "principal",
            life.max_sessions_per_principal,
            f"{SESSIONS_PREFIX}.*.{principal_key(session.principal)}.*",
        ),
        ("avatar", life.max_sessions_per_avatar, f"{SESSIONS_PREFIX}.*.*.{session.avatar_id}"),
    ]
    return [(name, limit, subjects) for name, limit, subjects in quotas if limit is not None]


@dataclass(frozen=True)
class Slot:
    principal: str
    avatar_id: str
    room: str
    max_session_seconds: int
    started_at: float | None = None  # wall clock, once the agent said so

    def body(self) -> bytes:
        return json.dumps(asdict(self)).encode()


class SessionLedger:
    def __init__(
        self,
        bus: Bus,
        audit: AuditTrail | None = None,
        *,
        start_window_seconds: float = 120.0,
        timeout: float = 1.0,
        replicas: int = 1,
    ) -> None:
        self._bus = bus
        self._audit = audit
        self._start_window = start_window_seconds
        self._timeout = timeout
        self._replicas = replicas
        self._tasks: list[asyncio.Task[None]] = []

    async def provision(self) -> None:
        await self._bus.ensure_stream(
            StreamSpec(
                name=SESSIONS_STREAM,
                subjects=(f"{SESSIONS_PREFIX}.>",),
                max_age_seconds=2 * 86_400,  # no slot outlives a day-long session by more
                replicas=self._replicas,
                max_msgs_per_subject=1,
                allow_msg_ttl=True,
            )
        )

    # --- the quota decision, on the request path ------------------------------------------

    async def admit(self, session: Session) -> None:
        """Take a slot for ``session``, or refuse: 429 past a quota, 503 if the count
        cannot be read in time (quotas are cost control: they fail closed). A session no
        quota applies to takes no slot: nothing is counted, NATS is not asked."""
        quotas = quota_filters(session)
        if not quotas:
            return
        try:
            async with asyncio.timeout(self._timeout):
                for name, limit, subjects in quotas:
                    held = len(await self._bus.subjects_in(SESSIONS_STREAM, subjects))
                    if held >= limit:
                        raise ApiError(
                            429,
                            "too_many_sessions",
                            f"at most {limit} concurrent sessions per {name}",
                            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
                        )
                await self._take(session)
        except ApiError:
            raise
        except Exception as exc:  # NATS down, slow, or refusing: no count, no session
            log.warning("session quota unavailable", extra={"error": str(exc)[:200]})
            raise ApiError(
                503,
                "quota_unavailable",
                "session quotas cannot be checked right now",
                headers={"Retry-After": "5"},
            ) from None

    async def _take(self, session: Session) -> None:
        slot = Slot(
            session.principal,
            session.avatar_id,
            session.room,
            session.lifecycle.max_session_seconds,
        )
        await self._bus.put(
            slot_subject(session.room, session.principal, session.avatar_id),
            slot.body(),
            ttl_seconds=self._start_window,
        )

    # --- the agents' session events ---------------------------------------------------

    async def _slots(self, room: str, *, ended: bool = False) -> list[tuple[str, Slot]]:
        """The room's slots (subject and body), or with ``ended`` the records of its ended
        ones (each under its slot's subject, without the suffix)."""
        pattern = f"{SESSIONS_PREFIX}.{encode_room(room)}.*.*" + (f".{ENDED}" if ended else "")
        found = []
        for subject in await self._bus.subjects_in(SESSIONS_STREAM, pattern):
            body = await self._bus.last_on(SESSIONS_STREAM, subject)
            if body:
                found.append((subject.removesuffix(f".{ENDED}"), Slot(**json.loads(body))))
        return found

    async def started(self, event: AgentSessionStarted) -> None:
        # A token whose session ended may start another in a room its caller named: the
        # slot comes back from the ended one's record, and is counted again.
        slots = await self._slots(event.room) or await self._slots(event.room, ended=True)
        slot = None
        if slots:
            subject, slot = slots[0]
            renewed = Slot(**(asdict(slot) | {"started_at": event.ts.timestamp()}))
            ttl = slot.max_session_seconds + GRACE_SECONDS
            await self._bus.put(subject, renewed.body(), ttl_seconds=ttl)
        self._record(
            SessionStarted(
                id=_audit_id(event.id),
                principal=slot.principal if slot else None,
                avatar_id=event.avatar_id,
                room=event.room,
                ts=event.ts,
            )
        )

    async def ended(self, event: AgentSessionEnded) -> None:
        # The ended session's slot is the one its session_started renewed before the end;
        # another token's slot for the same room, not started yet, stays, and so does one
        # a later session renewed (its start applied first). With no start on record at
        # all (an older agent, or its start not applied yet), every slot of the room goes.
        slots = await self._slots(event.room)
        ended_at = event.ts.timestamp()
        ours = [
            (subject, slot)
            for subject, slot in slots
            if slot.started_at is not None and slot.started_at <= ended_at
        ]
        if all(slot.started_at is None for _, slot in slots):
            ours = slots
        for subject, slot in ours:
            await self._bus.purge_subjects(SESSIONS_STREAM, subject)
            # kept, uncounted, while its token may start another session in the room
            record = Slot(**(asdict(slot) | {"started_at": None}))
            await self._bus.put(f"{subject}.{ENDED}", record.body(), ttl_seconds=self._start_window)
        held = ours[0][1] if ours else None
        duration = event.duration_seconds
        if duration is None and held is not None and held.started_at is not None:
            duration = max(0.0, ended_at - held.started_at)  # an older agent
        self._record(
            SessionEnded(
                id=_audit_id(event.id),
                principal=held.principal if held else None,
                avatar_id=event.avatar_id,
                room=event.room,
                ts=event.ts,
                reason=event.reason,
                duration_seconds=duration,
            )
        )

    def _record(self, event: SessionStarted | SessionEnded) -> None:
        if self._audit is not None:
            self._audit.record(event)

    def start(self) -> None:
        """Follow the agents' session events (every replica shares each consumer)."""
        for name, kind in TOKEN_CONSUMERS.items():
            self._tasks.append(asyncio.create_task(self._follow(name, kind), name=name))

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _follow(self, name: str, kind: str) -> None:
        config = api.ConsumerConfig(
            name=name,
            durable_name=name,
            filter_subject=f"{PREFIX}.agent.{kind}.*",
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=30.0,
            max_deliver=10,
            # a new consumer starts from what the stream holds (a day): sessions that
            # started before the token service first ran still end in the trail
            deliver_policy=api.DeliverPolicy.ALL,
        )
        while True:
            try:
                await self._bus.ensure_consumer(EVENTS_STREAM, config)
                feed = self._bus.pull_feed(EVENTS_STREAM, name, batch=64)
                await feed.start()
                try:
                    while True:
                        for msg in await feed.take(5.0):
                            await self._handle(msg)
                finally:
                    await feed.stop()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # no events stream yet, NATS away: try again
                log.info("session events not followed yet", extra={"error": str(exc)[:200]})
                await asyncio.sleep(2.0)

    async def _handle(self, msg: Delivered) -> None:
        try:
            event = decode_event(msg.data)
        except InvalidEvent as exc:  # never valid: dropped, not redelivered
            log.warning("invalid session event dropped", extra={"error": str(exc)[:200]})
            await msg.term()
            return
        try:
            if isinstance(event, AgentSessionStarted):
                await self.started(event)
            elif isinstance(event, AgentSessionEnded):
                await self.ended(event)
        except Exception as exc:
            log.warning("session event not applied", extra={"error": str(exc)[:200]})
            await msg.nak(delay=1.0)
            return
        await msg.ack()


def _audit_id(event_id: str) -> str:
    """The same audit id for every delivery of one agent event (stored once)."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"audit:{event_id}").hex
