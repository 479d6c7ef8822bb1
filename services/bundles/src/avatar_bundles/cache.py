"""Two cache tiers: a small LRU in this process, and a JetStream object store that every
replica shares. Entries carry the time they were fetched; freshness is decided by the
reader, so one stored copy serves both as fresh and, later, as a stale fallback. The
bucket's TTL (freshness + stale window) removes what nobody may serve any more.

The shared tier is an object store, not a key-value bucket, because a bundle may be
larger than a NATS message (1 MiB by default): the object store splits it into chunks.
It is a cache, so it may fail without failing a request: every operation has a
``timeout``, a failure is counted and logged, and after one the tier is skipped for a
pause that doubles per failure in a row (up to a minute), as it is whenever the NATS
connection is down. A miss then costs an upstream call, not seconds of waiting.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from nats.errors import Error as NatsError
from opentelemetry import metrics

from avatar_bundles.sources import payload_of
from avatar_shared import semconv
from avatar_shared.bus import ObjectCorrupt, Objects, ObjectTooLarge

log = logging.getLogger(__name__)

BUCKET = "AVATAR_BUNDLES"
FETCHED_AT_HEADER = "Avatar-Fetched-At"
#: How far ahead of this replica's clock another replica's may be. An entry dated later
#: (a replica whose clock is hours ahead, a header of "inf") would be fresh here for as
#: long, in the shared cache and in every replica's memory: it is read as malformed.
MAX_CLOCK_SKEW_SECONDS = 60.0
_MAX_PAUSE_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class Cached:
    body: bytes  # the HTTP answer, ``{"payload": ...}``, serialised once per fetch
    etag: str
    fetched_at: float

    @classmethod
    def of(cls, payload: str, fetched_at: float) -> Cached:
        return cls.from_body(json.dumps({"payload": payload}).encode(), fetched_at)

    @classmethod
    def from_body(cls, body: bytes, fetched_at: float) -> Cached:
        digest = hashlib.sha256(body).hexdigest()[:32]
        return cls(body, f'"{digest}"', fetched_at)

    def age(self, now: float) -> float:
        return now - self.fetched_at


class MemoryCache:
    """Least recently used first out, past ``max_entries`` or ``max_bytes`` of bodies."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._bytes = 0
        self._entries: OrderedDict[str, Cached] = OrderedDict()

    def get(self, key: str) -> Cached | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key: str, entry: Cached) -> None:
        self.drop(key)
        self._entries[key] = entry
        self._bytes += len(entry.body)
        while len(self._entries) > self._max_entries or self._bytes > self._max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= len(evicted.body)

    def drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= len(entry.body)


class NegativeCache:
    """Avatars the source said do not exist, remembered for ``ttl`` seconds."""

    def __init__(
        self, ttl: float, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ttl = ttl
        self._max = max_entries
        self._clock = clock
        self._until: OrderedDict[str, float] = OrderedDict()

    def __contains__(self, key: str) -> bool:
        until = self._until.get(key)
        if until is None:
            return False
        if until <= self._clock():
            del self._until[key]
            return False
        return True

    def add(self, key: str) -> None:
        if self._ttl <= 0:
            return
        self._until.pop(key, None)
        self._until[key] = self._clock() + self._ttl
        while len(self._until) > self._max:
            self._until.popitem(last=False)

    def discard(self, key: str) -> None:
        self._until.pop(key, None)


class SharedCache:
    """The JetStream object store; failures are counted and read as misses, never raised."""

    def __init__(
        self,
        store: Objects,
        *,
        connected: Callable[[], bool],
        timeout: float,
        max_bytes: int,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self._store = store
        self._connected = connected
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._clock = clock
        self._wall_clock = wall_clock
        self._failures = 0
        self._resume_at = 0.0
        meter = metrics.get_meter("avatar_bundles", meter_provider=meter_provider)
        self._operations = meter.create_counter(
            semconv.METRIC_BUNDLE_SHARED_CACHE,
            description="Shared bundle cache operations, by operation and outcome",
        )
        meter.create_observable_gauge(
            semconv.METRIC_BUNDLE_SHARED_CACHE_UP,
            callbacks=[lambda _: [metrics.Observation(int(self.available()))]],
            description="1 while the shared bundle cache is used, 0 while it is skipped",
        )

    def available(self) -> bool:
        return self._connected() and self._clock() >= self._resume_at

    async def get(self, key: str) -> Cached | None:
        if not self._begin("get"):
            return None
        try:
            async with asyncio.timeout(self._timeout):
                found = await self._store.get(key, max_bytes=self._max_bytes)
            if found is None:
                self._done("get", "miss")
                return None
            fetched_at = float(found.headers[FETCHED_AT_HEADER][0])
            if not fetched_at <= self._wall_clock() + MAX_CLOCK_SKEW_SECONDS:  # NaN too
                raise ValueError(f"fetched at {fetched_at!r}, later than this clock allows")
            payload_of(found.data)
        except (NatsError, TimeoutError) as exc:
            self._failed("get", exc)
            return None
        except (ObjectTooLarge, ObjectCorrupt, ValueError, KeyError, IndexError, TypeError) as exc:
            log.warning("ignoring a malformed shared cache entry: %r", exc)
            self._done("get", "malformed")
            return None
        self._done("get", "hit")
        return Cached.from_body(found.data, fetched_at)

    async def put(self, key: str, entry: Cached) -> None:
        if not self._begin("put"):
            return
        headers = {FETCHED_AT_HEADER: [repr(entry.fetched_at)]}
        try:
            async with asyncio.timeout(self._timeout):
                await self._store.put(key, entry.body, headers=headers)
        except (NatsError, TimeoutError) as exc:
            self._failed("put", exc)
            return
        self._done("put", "ok")

    async def drop(self, key: str) -> None:
        if not self._begin("drop"):
            return
        try:
            async with asyncio.timeout(self._timeout):
                await self._store.delete(key)
        except (NatsError, TimeoutError) as exc:
            self._failed("drop", exc)
            return
        self._done("drop", "ok")

    def _begin(self, operation: str) -> bool:
        if self.available():
            return True
        self._done(operation, "skipped")
        return False

    def _done(self, operation: str, outcome: str) -> None:
        self._operations.add(1, {semconv.CACHE_OPERATION: operation, semconv.OUTCOME: outcome})
        if outcome != "skipped":
            self._failures = 0

    def _failed(self, operation: str, exc: Exception) -> None:
        self._operations.add(1, {semconv.CACHE_OPERATION: operation, semconv.OUTCOME: "error"})
        self._failures += 1
        pause = min(_MAX_PAUSE_SECONDS, 2.0 ** (self._failures - 1))
        self._resume_at = self._clock() + pause
        log.warning(
            "shared bundle cache %s failed (%s); skipping it for %.0f s",
            operation,
            type(exc).__name__,
            pause,
        )
