"""Getting one bundle: memory, then the shared cache, then the source; once per avatar.

- Fresh in memory: answered at once (the hot path: no I/O).
- An avatar the source said does not exist is answered 404 from memory for
  ``negative_ttl`` seconds: the same unknown id asked for again costs no upstream call.
- Otherwise one load per avatar at a time in this replica (single-flight): concurrent
  requests wait for the same load. Across replicas the shared cache de-duplicates
  mostly, not strictly: two replicas missing at the same moment may both call upstream.
- The source answering 404/403 removes the cached copy; a transient failure (5xx,
  timeout, rate limit, the source resting after failures) serves the newest copy still
  within the stale window, if any.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from opentelemetry import metrics, trace

from avatar_bundles.cache import Cached, MemoryCache, NegativeCache, SharedCache
from avatar_bundles.sources import BundleSource, SourceError, not_found
from avatar_shared import semconv


@dataclass(frozen=True, slots=True)
class Served:
    bundle: Cached
    cache: str  # "memory", "shared", "miss" or "stale" (or, refused, "negative")


class BundleService:
    def __init__(
        self,
        source: BundleSource,
        memory: MemoryCache,
        shared: SharedCache | None,
        *,
        ttl_seconds: float,
        stale_seconds: float,
        unknown: NegativeCache,
        clock: Callable[[], float] = time.time,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self._source = source
        self._memory = memory
        self._shared = shared
        self._ttl = ttl_seconds
        self._stale = stale_seconds
        self._unknown = unknown
        self._clock = clock
        self._loads: dict[str, asyncio.Task[Served]] = {}
        meter = metrics.get_meter("avatar_bundles", meter_provider=meter_provider)
        self._requests = meter.create_counter(
            semconv.METRIC_BUNDLE_REQUESTS, description="Bundle requests by cache outcome"
        )

    async def get(self, avatar_id: str) -> Served:
        hit = self._memory.get(avatar_id)
        if hit is not None and hit.age(self._clock()) < self._ttl:
            return self._count(Served(hit, "memory"))
        if avatar_id in self._unknown:
            self._outcome("negative")
            raise not_found()
        load = self._loads.get(avatar_id)
        if load is None:
            load = asyncio.ensure_future(self._load(avatar_id, hit))
            self._loads[avatar_id] = load
            load.add_done_callback(lambda _: self._loads.pop(avatar_id, None))
        # shield: a caller that goes away must not cancel the load the others wait for
        return self._count(await asyncio.shield(load))

    async def _load(self, avatar_id: str, hit: Cached | None) -> Served:
        now = self._clock()
        shared = await self._shared.get(avatar_id) if self._shared else None
        if shared is not None and shared.age(now) < self._ttl:
            self._memory.put(avatar_id, shared)
            return Served(shared, "shared")
        try:
            payload = await self._source.fetch(avatar_id)
        except SourceError as exc:
            if not exc.transient:
                self._memory.drop(avatar_id)
                if exc.status == 404:
                    self._unknown.add(avatar_id)
                if self._shared and shared is not None:
                    await self._shared.drop(avatar_id)
                raise
            newest = max((c for c in (hit, shared) if c), key=lambda c: c.fetched_at, default=None)
            if newest is not None and newest.age(now) < self._ttl + self._stale:
                return Served(newest, "stale")
            raise
        fresh = Cached.of(payload, self._clock())
        self._memory.put(avatar_id, fresh)
        if self._shared:
            await self._shared.put(avatar_id, fresh)
        return Served(fresh, "miss")

    def _count(self, served: Served) -> Served:
        self._outcome(served.cache)
        return served

    def _outcome(self, cache: str) -> None:
        self._requests.add(1, {semconv.CACHE: cache})
        trace.get_current_span().set_attribute(semconv.CACHE, cache)
