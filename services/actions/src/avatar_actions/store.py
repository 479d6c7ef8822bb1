"""Durable per-room state and the record of packets sent, in JetStream key-value buckets.

Room state is keyed ``<partition>.<room token>`` (tokens are subject-safe, see
:mod:`avatar_shared.rooms`), so a replica taking a partition over finds its rooms. The
sent record is keyed by room, the id of the event that caused the packet and the action,
so a redelivered event or a successor replica finds the packet already sent.
"""

from __future__ import annotations

from collections.abc import Awaitable

from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue
from pydantic import BaseModel

from avatar_actions.rules import RoomState
from avatar_shared.rooms import decode_room, encode_room

STATE_BUCKET = "ACTIONS_ROOMS"
SENT_BUCKET = "ACTIONS_SENT"


class Outgoing(BaseModel):
    """A packet decided on and not yet sent (LiveKit was unavailable)."""

    action: str
    speech_id: str | None
    cause_id: str
    decided_at: float
    #: Look in the sent record first: someone may have sent it already (a redelivered
    #: event, state inherited from a predecessor, an attempt that timed out).
    verify: bool = True


class StoredRoom(BaseModel):
    avatar_id: str | None = None
    decisions_seq: int = 0
    rules: RoomState = RoomState()
    applied: list[str] = []  # ids of the latest events applied, to skip redeliveries
    outbox: list[Outgoing] = []  # in order; the head blocks the rest (per-room order)
    retry_at: float | None = None
    failures: int = 0


class RoomStore:
    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    async def load(self, partition: int, room: str) -> StoredRoom:
        try:
            entry = await self._kv.get(f"{partition}.{encode_room(room)}")
        except KeyNotFoundError:
            return StoredRoom()
        return StoredRoom.model_validate_json(entry.value or b"{}")

    def save(self, partition: int, room: str, stored: StoredRoom) -> Awaitable[int]:
        """Serialise the state now; the returned awaitable writes it."""
        return self._kv.put(f"{partition}.{encode_room(room)}", stored.model_dump_json().encode())

    async def rooms(self, partition: int) -> list[str]:
        """Every room of a partition with stored state (to resume held gestures)."""
        keys = await matching_keys(self._kv, f"{partition}.*")
        return [decode_room(key.split(".", 1)[1]) for key in keys]


async def matching_keys(kv: KeyValue, pattern: str) -> list[str]:
    """Keys matching a subject pattern (``member.*``), filtered by the server.

    nats-py's ``keys(filters=...)`` lists every key and keeps those that contain a
    filter as a substring, so a wildcard never matches; a watch filters server-side.
    """
    watcher = await kv.watch(pattern, ignore_deletes=True, meta_only=True)
    keys = []
    try:
        async for entry in watcher:
            if entry is None:  # the end of what is stored now
                break
            keys.append(entry.key)
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]
    return keys


class SentRecord:
    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    @staticmethod
    def _key(room: str, cause_id: str, action: str) -> str:
        return f"{encode_room(room)}.{cause_id}.{action}"

    async def was_sent(self, room: str, cause_id: str, action: str) -> bool:
        try:
            await self._kv.get(self._key(room, cause_id, action))
        except KeyNotFoundError:
            return False
        return True

    async def mark_sent(self, room: str, cause_id: str, action: str) -> None:
        await self._kv.put(self._key(room, cause_id, action), b"1")
