"""Where bundles come from: a folder of files, or ZeroWeight's API.

Both answer ``fetch(avatar_id) -> payload`` or raise a :class:`SourceError` whose status
the API passes on: 404 unknown avatar, 403 not ours to fetch, 502 upstream broken,
503 upstream rate-limited (with the seconds to wait).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

import httpx
from opentelemetry import propagate, trace

from avatar_shared.retry import backoff

log = logging.getLogger(__name__)
AVATAR_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
API_KEY_HEADER = "X-ZW-Api-Key"


class SourceError(Exception):
    def __init__(self, status: int, error: str, message: str, retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.retry_after = retry_after

    @property
    def transient(self) -> bool:
        """Worth serving a stale copy for (the avatar may well still exist)."""
        return self.status >= 500


def not_found() -> SourceError:
    return SourceError(404, "not_found", "no bundle for this avatar")


class BundleSource(Protocol):
    async def fetch(self, avatar_id: str) -> str: ...


def _payload(body: object) -> str:
    payload = body.get("payload") if isinstance(body, dict) else None
    if not isinstance(payload, str):
        raise ValueError("bundle is not a JSON object with a string 'payload'")
    return payload


class DirectorySource:
    """``<root>/<avatar_id>.json`` holding ``{"payload": "..."}``; nothing outside ``root``."""

    def __init__(self, root: Path) -> None:
        self._root = root.resolve()
        if not self._root.is_dir():
            raise ValueError(f"BUNDLES_DIRECTORY: {root} is not a directory")

    async def fetch(self, avatar_id: str) -> str:
        if not AVATAR_ID.match(
            avatar_id
        ):  # the API validated it; this module does not rely on that
            raise not_found()
        path = (self._root / f"{avatar_id}.json").resolve()
        if path.parent != self._root:
            raise not_found()
        try:
            raw = await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            raise not_found() from None
        try:
            return _payload(json.loads(raw))
        except ValueError as exc:
            log.error("bundle file %s is invalid: %s", path.name, exc)
            raise SourceError(502, "bad_bundle", "the stored bundle is invalid") from None


class RateGate:
    """Stops calling upstream before its per-IP limit does it for us.

    ZeroWeight allows 200 requests a minute per client IP (every pod behind one NAT
    shares it) and reports ``X-RateLimit-Remaining``. Once that falls to ``reserve``, or a
    429 arrives, calls stop until ``Retry-After`` (else one window) has passed.
    """

    WINDOW_SECONDS = 60.0

    def __init__(self, reserve: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._reserve = reserve
        self._clock = clock
        self._closed_until = 0.0

    def wait_seconds(self) -> float:
        return max(0.0, self._closed_until - self._clock())

    def observe(self, response: httpx.Response) -> None:
        retry_after = _seconds(response.headers.get("Retry-After"))
        if response.status_code == 429:
            self._close(retry_after or self.WINDOW_SECONDS)
            return
        remaining = response.headers.get("X-RateLimit-Remaining")
        if remaining is not None and remaining.isdigit() and int(remaining) <= self._reserve:
            self._close(retry_after or self.WINDOW_SECONDS)

    def _close(self, seconds: float) -> None:
        self._closed_until = max(self._closed_until, self._clock() + seconds)


def _seconds(value: str | None) -> float:
    try:
        return max(0.0, float(value)) if value else 0.0
    except ValueError:
        return 0.0


class ZeroWeightSource:
    """``GET {base}/api/v1/avatars/bundle/{id}`` with the server-side ``X-ZW-Api-Key``."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        client: httpx.AsyncClient,
        *,
        timeout: float,
        retries: int,
        gate: RateGate,
        on_call: Callable[[str], None] = lambda status: None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._headers = {API_KEY_HEADER: api_key, "Accept": "application/json"}
        self._client = client
        self._timeout = timeout
        self._retries = retries
        self._gate = gate
        self._on_call = on_call
        self._sleep = sleep
        self._tracer = trace.get_tracer("avatar_bundles", tracer_provider=tracer_provider)

    async def fetch(self, avatar_id: str) -> str:
        url = f"{self._base}/api/v1/avatars/bundle/{avatar_id}"
        for attempt in range(self._retries + 1):
            wait = self._gate.wait_seconds()
            if wait > 0:
                self._on_call("shed")
                raise SourceError(503, "upstream_rate_limited", "bundle source is busy", wait)
            if attempt:
                await self._sleep(backoff(attempt, base=0.1, cap=2.0))
            try:
                response = await self._get(url, attempt)
            except httpx.TransportError as exc:  # timeouts, refused connections, resets
                self._on_call(type(exc).__name__)
                log.warning("ZeroWeight request failed: %s", type(exc).__name__)
                continue
            self._on_call(str(response.status_code))
            self._gate.observe(response)
            if response.status_code == 200:
                try:
                    return _payload(response.json())
                except ValueError:
                    raise SourceError(
                        502, "bad_upstream", "bundle source sent no payload"
                    ) from None
            if response.status_code == 404:
                raise not_found()
            if response.status_code == 403:
                raise SourceError(403, "forbidden_avatar", "this avatar's bundle is not available")
            if response.status_code == 401:
                log.error("ZeroWeight refused our API key (401): check BUNDLES_ZEROWEIGHT_API_KEY")
                raise SourceError(502, "bad_upstream", "bundle source refused our credentials")
            if response.status_code == 429:
                raise SourceError(
                    503, "upstream_rate_limited", "bundle source is busy", self._gate.wait_seconds()
                )
            if response.status_code < 500:
                raise SourceError(
                    502, "bad_upstream", f"bundle source answered {response.status_code}"
                )
        raise SourceError(502, "upstream_unavailable", "bundle source is unavailable")

    async def _get(self, url: str, attempt: int) -> httpx.Response:
        """One upstream call in a CLIENT span; W3C context goes along in the headers."""
        with self._tracer.start_as_current_span(
            "GET",
            kind=trace.SpanKind.CLIENT,
            attributes={
                "http.request.method": "GET",
                "server.address": httpx.URL(url).host,
                "url.template": "/api/v1/avatars/bundle/{avatar_id}",
                "http.request.resend_count": attempt,
            },
        ) as span:
            headers = dict(self._headers)
            propagate.inject(headers)
            response = await self._client.get(url, headers=headers, timeout=self._timeout)
            span.set_attribute("http.response.status_code", response.status_code)
            if response.status_code >= 500:
                span.set_status(trace.Status(trace.StatusCode.ERROR))
            return response
