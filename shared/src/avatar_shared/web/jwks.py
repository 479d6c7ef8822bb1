"""The issuer's signing keys, fetched over HTTP and cached.

Keys are kept for ``ttl`` seconds. A token naming an unknown ``kid`` (the issuer rotated
its keys) triggers one refetch, at most every ``min_refresh`` seconds, so a flood of
tokens with made-up key ids cannot turn into a flood of requests to the issuer.
Concurrent refetches are coalesced into one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx
import jwt

log = logging.getLogger(__name__)


class JwksCache:
    def __init__(
        self,
        url: str,
        client: httpx.AsyncClient,
        *,
        ttl: float = 300.0,
        min_refresh: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self._client = client
        self._ttl = ttl
        self._min_refresh = min_refresh
        self._clock = clock
        self._keys: dict[str, Any] = {}
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()

    async def key(self, kid: str) -> Any | None:
        """The verification key for ``kid``, or None if the issuer does not publish it."""
        now = self._clock()
        stale = self._fetched_at is None or now - self._fetched_at > self._ttl
        unknown = kid not in self._keys
        may_refresh = self._fetched_at is None or now - self._fetched_at > self._min_refresh
        if stale or (unknown and may_refresh):
            await self._refresh(since=self._fetched_at)
        return self._keys.get(kid)

    async def _refresh(self, since: float | None) -> None:
        async with self._lock:
            if self._fetched_at != since:
                return  # someone else refreshed while we waited
            try:
                response = await self._client.get(self._url, timeout=5.0)
                response.raise_for_status()
                keys = {}
                for jwk in response.json().get("keys", []):
                    if "kid" in jwk and jwk.get("use", "sig") == "sig":
                        keys[jwk["kid"]] = jwt.PyJWK.from_json(json.dumps(jwk)).key
            except (httpx.HTTPError, ValueError, jwt.PyJWTError) as exc:
                log.warning("could not refresh JWKS: %s", exc)
                if self._fetched_at is None:
                    return
                keys = self._keys  # keep serving the keys we had
            self._keys = keys
            self._fetched_at = self._clock()
