"""A JetStream key-value bucket, as the services use it.

:class:`Bucket` wraps nats-py's ``KeyValue`` with the few operations the services need
and answers "absent" or "someone else wrote first" with values instead of exceptions,
so callers branch on outcomes and see exceptions only for NATS being unavailable
(``nats.errors.Error``, ``TimeoutError``): those are transient, and theirs to handle.
"""

from __future__ import annotations

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue


class Bucket:
    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    async def get(self, key: str) -> bytes | None:
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            return None
        return entry.value if entry.value is not None else b""

    async def put(self, key: str, value: bytes) -> int:
        """Write ``value``; its revision."""
        return await self._kv.put(key, value)

    async def create(self, key: str, value: bytes) -> int | None:
        """Write ``value`` only if ``key`` is absent; its revision, or None if present."""
        try:
            return await self._kv.create(key, value)
        except KeyWrongLastSequenceError:
            return None

    async def update(self, key: str, value: bytes, *, last: int) -> int | None:
        """Write ``value`` only if ``key`` is still at revision ``last``; the new revision,
        or None if someone else wrote or deleted it meanwhile."""
        try:
            return await self._kv.update(key, value, last=last)
        except (KeyWrongLastSequenceError, KeyNotFoundError):
            return None

    async def delete(self, key: str, *, last: int | None = None) -> bool:
        """Delete ``key`` (only at revision ``last``, if given); whether it was."""
        try:
            return await self._kv.delete(key, last=last)
        except (KeyWrongLastSequenceError, KeyNotFoundError):
            return False

    async def keys(self, pattern: str) -> list[str]:
        """Keys matching a subject pattern (``member.*``), filtered by the server.

        nats-py's ``keys(filters=...)`` lists every key and keeps those that contain a
        filter as a substring, so a wildcard never matches; a watch filters server-side.
        """
        watcher = await self._kv.watch(pattern, ignore_deletes=True, meta_only=True)
        keys = []
        try:
            async for entry in watcher:
                if entry is None:  # the end of what is stored now
                    break
                keys.append(entry.key)
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]
        return keys
