"""The room store and the sent record in JetStream key-value buckets (the NATS adapters
of :class:`~avatar_actions.ports.RoomStore` and :class:`~avatar_actions.ports.SentRecord`).

Room state is keyed ``<partition>.<room token>`` (tokens are subject-safe, see
:mod:`avatar_shared.rooms`), so a replica taking a partition over finds its rooms. The
sent record is keyed by room, the id of the event that caused the packet and the action,
so a redelivered event or a successor replica finds the packet already sent.
"""

from __future__ import annotations

from collections.abc import Awaitable

from avatar_actions.state import StoredRoom
from avatar_shared.bus import Bucket
from avatar_shared.rooms import decode_room, encode_room


class KvRoomStore:
    def __init__(self, bucket: Bucket) -> None:
        self._bucket = bucket

    async def load(self, partition: int, room: str) -> StoredRoom:
        value = await self._bucket.get(f"{partition}.{encode_room(room)}")
        return StoredRoom.model_validate_json(value) if value else StoredRoom()

    def save(self, partition: int, room: str, stored: StoredRoom) -> Awaitable[int]:
        return self._bucket.put(
            f"{partition}.{encode_room(room)}", stored.model_dump_json().encode()
        )

    async def rooms(self, partition: int) -> list[str]:
        keys = await self._bucket.keys(f"{partition}.*")
        return [decode_room(key.split(".", 1)[1]) for key in keys]


class KvSentRecord:
    def __init__(self, bucket: Bucket) -> None:
        self._bucket = bucket

    @staticmethod
    def _key(room: str, cause_id: str, action: str) -> str:
        return f"{encode_room(room)}.{cause_id}.{action}"

    async def was_sent(self, room: str, cause_id: str, action: str) -> bool:
        return await self._bucket.get(self._key(room, cause_id, action)) is not None

    async def mark_sent(self, room: str, cause_id: str, action: str) -> None:
        await self._bucket.put(self._key(room, cause_id, action), b"1")
