"""The issuer's signing keys, fetched over HTTP and cached.

- Keys are kept for ``ttl`` seconds, and kept longer while the issuer cannot be reached:
  keys rotate slowly, and an outage of the issuer must not log everybody out.
- A token naming an unknown ``kid`` (the issuer rotated its keys) triggers a refetch at
  most every ``min_refresh`` seconds, so made-up key ids cannot become a flood of requests
  to the issuer.
- Every caller that needs keys while a fetch is under way waits for that one fetch.
- A failed fetch (error, non-200, bad document, over ``max_bytes``, or slower than
  ``timeout`` in all) starts a backoff window, doubling per consecutive failure up to
  ``max_backoff``, in which nobody fetches. While keys a token needs cannot be had,
  :meth:`JwksCache.key` raises :class:`KeysUnavailable` (the service answers 503), which
  is not the same as the issuer saying the key does not exist (``None``, a 401).
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

from avatar_shared.web.fetch import ACCEPT_ENCODING, UpstreamBodyError, read_limited

log = logging.getLogger(__name__)


class KeysUnavailable(Exception):
    """The issuer's keys cannot be had now; ``retry_after`` seconds until the next try."""

    def __init__(self, retry_after: float) -> None:
        super().__init__("the issuer's signing keys are unavailable")
        self.retry_after = retry_after


class JwksCache:
    def __init__(
        self,
        url: str,
        client: httpx.AsyncClient,
        *,
        ttl: float = 300.0,
        min_refresh: float = 30.0,
        timeout: float = 5.0,
        max_backoff: float = 60.0,
        max_bytes: int = 256 * 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self._client = client
        self._ttl = ttl
        self._min_refresh = min_refresh
        self._timeout = timeout
        self._max_backoff = max_backoff
        self._max_bytes = max_bytes
        self._clock = clock
        self._keys: dict[str, Any] = {}
        self._fetched_at: float | None = None  # last success
        self._attempted_at: float | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._fetch: asyncio.Future[None] | None = None

    async def key(self, kid: str) -> Any | None:
        """The verification key for ``kid``; None if the issuer does not publish it;
        :class:`KeysUnavailable` if the keys cannot be had now."""
        now = self._clock()
        stale = self._fetched_at is None or now - self._fetched_at > self._ttl
        known = kid in self._keys
        recent = self._attempted_at is not None and now - self._attempted_at <= self._min_refresh
        if stale or (not known and not recent):
            await self._refresh()
        key = self._keys.get(kid)
        if key is None and self._failures:
            raise KeysUnavailable(max(1.0, self._retry_at - self._clock()))
        return key

    async def _refresh(self) -> None:
        if self._fetch is None:
            if self._failures and self._clock() < self._retry_at:
                return  # backing off: the keys we have are all we have
            self._fetch = asyncio.ensure_future(self._fetch_keys())
            self._fetch.add_done_callback(self._fetched)
        # shield: a caller that goes away must not cancel the fetch the others wait for
        await asyncio.shield(self._fetch)

    def _fetched(self, _: asyncio.Future[None]) -> None:
        self._fetch = None

    async def _fetch_keys(self) -> None:
        self._attempted_at = self._clock()
        try:
            async with asyncio.timeout(self._timeout):
                keys = await self._download()
        except (
            TimeoutError,
            httpx.HTTPError,
            UpstreamBodyError,
            ValueError,
            RecursionError,
        ) as exc:
            self._failures += 1
            wait = min(self._max_backoff, 2.0 ** (self._failures - 1))
            self._retry_at = self._clock() + wait
            log.warning(
                "could not fetch the issuer's keys (%s); next try in %.0f s",
                type(exc).__name__,
                wait,
            )
            return
        self._keys = keys
        self._fetched_at = self._clock()
        self._failures = 0

    async def _download(self) -> dict[str, Any]:
        headers = {"Accept": "application/json", "Accept-Encoding": ACCEPT_ENCODING}
        async with self._client.stream("GET", self._url, headers=headers) as response:
            response.raise_for_status()
            document = json.loads(await read_limited(response, self._max_bytes))
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise ValueError("not a JWKS document")
        keys = {}
        for jwk in document["keys"]:
            if not (isinstance(jwk, dict) and "kid" in jwk and jwk.get("use", "sig") == "sig"):
                continue
            try:
                keys[str(jwk["kid"])] = jwt.PyJWK.from_json(json.dumps(jwk)).key
            except (jwt.PyJWTError, ValueError, TypeError, KeyError):
                log.warning("skipping a signing key the issuer published that cannot be read")
        return keys
