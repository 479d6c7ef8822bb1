"""The room store in a JetStream key-value bucket (the NATS adapter of
:class:`~avatar_actions.ports.RoomStore`).

Room state is keyed ``<partition>.<room token>`` (tokens are subject-safe, see
:mod:`avatar_shared.rooms`), so a replica taking a partition over finds its rooms.
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
