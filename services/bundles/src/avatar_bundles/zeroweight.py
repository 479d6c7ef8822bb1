"""The ZeroWeight backend: ``GET {base}/api/v1/avatars/bundle/{id}`` with the
server-side ``X-ZW-Api-Key``, and the discipline that protects both sides.

- **One deadline per bundle** (``deadline``): every attempt, backoff pause and wait for a
  free slot happens inside it; each attempt also has its own ``timeout``. A source that
  drips one byte a second costs one deadline, not one timeout per byte or per attempt.
- **Bounded bodies**: at most ``upstream_concurrency`` calls hold a body at once, and each
  is read decoded, chunk by chunk, up to ``max_bytes`` (:func:`read_limited`): a gzip bomb
  or a 40 MiB payload is ``502 bundle_too_large`` after ``max_bytes``, never in memory.
- **Every defect is a 502**: an undecodable body, a body that is not a bundle (not JSON,
  nested thousands deep, no string payload), an unexpected status.
- **The gate** (:class:`UpstreamGate`) stops calls for a while, so one bad moment is not
  paid for again by every request: when ZeroWeight's per-IP budget runs low
  (``X-RateLimit-Remaining`` at the reserve) or it answers 429, for ``Retry-After``
  (seconds or HTTP date, capped) or else a minute; and when a bundle could not be had
  after every retry, for a backoff that doubles per consecutive failure. Closed, the
  gate answers 503 at once: the bundle service serves a stale copy where it has one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import httpx
from opentelemetry import propagate, trace

from avatar_bundles.sources import SourceError, not_found, payload_of, too_large
from avatar_shared.retry import backoff
from avatar_shared.retry_after import retry_after_seconds
from avatar_shared.web.fetch import (
    ACCEPT_ENCODING,
    UpstreamBodyError,
    header_count,
    read_limited,
)

log = logging.getLogger(__name__)
API_KEY_HEADER = "X-ZW-Api-Key"


class UpstreamGate:
    """When ZeroWeight may be called. Every value that can close it is bounded, so no
    answer can leave it closed for longer than ``max_retry_after`` or ``max_backoff``."""

    WINDOW_SECONDS = 60.0

    def __init__(
        self,
        reserve: int,
        *,
        max_retry_after: float = 300.0,
        max_backoff: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._reserve = reserve
        self._max_retry_after = max_retry_after
        self._max_backoff = max_backoff
        self._clock = clock
        self._wall_clock = wall_clock
        self._closed_until = 0.0
        self._failures = 0
        self.reason = ""

    def wait_seconds(self) -> float:
        return max(0.0, self._closed_until - self._clock())

    def observe(self, response: httpx.Response) -> None:
        """Read ZeroWeight's rate-limit signals off an answer."""
        retry_after = retry_after_seconds(
            response.headers.get("Retry-After"),
            now=self._wall_clock(),
            cap=self._max_retry_after,
        )
        if response.status_code == 429:
            self._close(retry_after or min(self.WINDOW_SECONDS, self._max_retry_after), "busy")
            return
        remaining = header_count(response.headers.get("X-RateLimit-Remaining", ""))
        if remaining is not None and remaining <= self._reserve:
            self._close(retry_after or min(self.WINDOW_SECONDS, self._max_retry_after), "busy")

    def failed(self) -> float:
        """A bundle could not be had after every retry: rest, longer each time in a row."""
        self._failures += 1
        wait = min(self._max_backoff, 2.0 ** (self._failures - 1))
        self._close(wait, "failing")
        return wait

    def succeeded(self) -> None:
        self._failures = 0

    def _close(self, seconds: float, reason: str) -> None:
        until = self._clock() + seconds
        if until > self._closed_until:
            self._closed_until = until
            self.reason = reason


class ZeroWeightSource:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        client: httpx.AsyncClient,
        *,
        timeout: float,
        deadline: float,
        retries: int,
        max_bytes: int,
        concurrency: int,
        gate: UpstreamGate,
        on_call: Callable[[str], None] = lambda status: None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._headers = {
            API_KEY_HEADER: api_key,
            "Accept": "application/json",
            "Accept-Encoding": ACCEPT_ENCODING,
        }
        self._client = client
        self._timeout = timeout
        self._deadline = deadline
        self._retries = retries
        self._max_bytes = max_bytes
        self._slots = asyncio.Semaphore(concurrency)
        self._gate = gate
        self._on_call = on_call
        self._sleep = sleep
        self._tracer = trace.get_tracer("avatar_bundles", tracer_provider=tracer_provider)

    async def fetch(self, avatar_id: str) -> str:
        self._refuse_if_closed()
        try:
            async with asyncio.timeout(self._deadline), self._slots:
                payload = await self._attempts(f"{self._base}/api/v1/avatars/bundle/{avatar_id}")
        except TimeoutError:
            self._gave_up("deadline")
            raise SourceError(
                502, "upstream_unavailable", "bundle source did not answer in time"
            ) from None
        if payload is None:
            self._gave_up("failing")
            raise SourceError(502, "upstream_unavailable", "bundle source is unavailable")
        self._gate.succeeded()
        return payload

    def _refuse_if_closed(self) -> None:
        wait = self._gate.wait_seconds()
        if wait <= 0:
            return
        self._on_call("shed")
        if self._gate.reason == "busy":
            raise SourceError(503, "upstream_rate_limited", "bundle source is busy", wait)
        raise SourceError(503, "upstream_unavailable", "bundle source is failing; resting", wait)

    def _gave_up(self, why: str) -> None:
        wait = self._gate.failed()
        log.warning("ZeroWeight %s; not calling it for %.0f s", why, wait)

    async def _attempts(self, url: str) -> str | None:
        """The payload; None when every attempt failed transiently; SourceError else."""
        for attempt in range(self._retries + 1):
            if attempt:
                await self._sleep(backoff(attempt, base=0.1, cap=2.0))
                self._refuse_if_closed()  # a 429 meanwhile closes it
            try:
                async with asyncio.timeout(self._timeout):
                    return await self._call(url, attempt)
            except (httpx.TransportError, TimeoutError) as exc:  # retried
                self._on_call(type(exc).__name__)
                log.warning("ZeroWeight request failed: %s", type(exc).__name__)
            except _Retry:
                pass
        return None

    async def _call(self, url: str, attempt: int) -> str:
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
            async with self._client.stream("GET", url, headers=headers) as response:
                span.set_attribute("http.response.status_code", response.status_code)
                self._on_call(str(response.status_code))
                self._gate.observe(response)
                if response.status_code >= 500:
                    span.set_status(trace.Status(trace.StatusCode.ERROR))
                    raise _Retry
                self._refuse(response.status_code)
                try:
                    return payload_of(await read_limited(response, self._max_bytes))
                except UpstreamBodyError as exc:
                    log.warning("ZeroWeight sent a bad body: %s", exc)
                    if exc.kind == "too_large":
                        raise too_large(self._max_bytes) from None
                    raise SourceError(
                        502, "bad_upstream", "bundle source sent a bad body"
                    ) from None
                except ValueError as exc:
                    log.warning("ZeroWeight sent something that is not a bundle: %s", exc)
                    raise SourceError(
                        502, "bad_upstream", "bundle source sent no payload"
                    ) from None

    def _refuse(self, status: int) -> None:
        """Anything but 200 (and 5xx, retried) ends the fetch."""
        if status == 200:
            return
        if status == 404:
            raise not_found()
        if status == 403:
            raise SourceError(403, "forbidden_avatar", "this avatar's bundle is not available")
        if status == 401:
            log.error("ZeroWeight refused our API key (401): check BUNDLES_ZEROWEIGHT_API_KEY")
            raise SourceError(502, "bad_upstream", "bundle source refused our credentials")
        if status == 429:
            raise SourceError(
                503, "upstream_rate_limited", "bundle source is busy", self._gate.wait_seconds()
            )
        raise SourceError(502, "bad_upstream", f"bundle source answered {status}")


class _Retry(Exception):
    """A 5xx: worth another attempt."""
