"""Two cache tiers: a small LRU in this process, and a JetStream key-value bucket that
every replica shares. Entries carry the time they were fetched; freshness is decided by
the reader, so one stored copy serves both as fresh and, later, as a stale fallback.
The bucket's TTL (freshness + stale window) removes what nobody may serve any more.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict
from dataclasses import dataclass

from nats.errors import Error as NatsError
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

log = logging.getLogger(__name__)

KV_BUCKET = "AVATAR_BUNDLES"


@dataclass(frozen=True, slots=True)
class Cached:
    payload: str
    etag: str
    fetched_at: float
    body: bytes  # the HTTP answer, serialised once per fetch rather than per request

    @classmethod
    def of(cls, payload: str, fetched_at: float) -> Cached:
        body = json.dumps({"payload": payload}).encode()
        digest = hashlib.sha256(body).hexdigest()[:32]
        return cls(payload, f'"{digest}"', fetched_at, body)

    def age(self, now: float) -> float:
        return now - self.fetched_at


class MemoryCache:
    def __init__(self, max_entries: int) -> None:
        self._max = max_entries
        self._entries: OrderedDict[str, Cached] = OrderedDict()

    def get(self, key: str) -> Cached | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key: str, entry: Cached) -> None:
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def drop(self, key: str) -> None:
        self._entries.pop(key, None)


class SharedCache:
    """The JetStream bucket; failures are logged and read as misses, never raised."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    async def get(self, key: str) -> Cached | None:
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            return None
        except (NatsError, TimeoutError) as exc:
            log.warning("shared bundle cache unavailable: %s", type(exc).__name__)
            return None
        if entry.value is None:
            return None
        try:
            body = json.loads(entry.value)
            return Cached.of(str(body["payload"]), float(body["fetched_at"]))
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed shared cache entry")
            return None

    async def put(self, key: str, entry: Cached) -> None:
        value = json.dumps({"payload": entry.payload, "fetched_at": entry.fetched_at}).encode()
        try:
            await self._kv.put(key, value)
        except (NatsError, TimeoutError) as exc:
            log.warning("could not write the shared bundle cache: %s", type(exc).__name__)

    async def drop(self, key: str) -> None:
        try:
            await self._kv.delete(key)
        except (NatsError, TimeoutError) as exc:
            log.warning("could not drop from the shared bundle cache: %s", type(exc).__name__)
