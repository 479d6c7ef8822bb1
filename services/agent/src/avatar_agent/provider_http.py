"""The HTTP client of the agent's OpenAI-compatible LLM: a provider's Retry-After is honoured.

livekit-agents retries a failed LLM request after intervals of its own (0.1 s, then 2 s),
whatever the provider asked for. :class:`RetryAfterGate` sits in the client's event
hooks: it reads ``Retry-After`` (seconds or an HTTP date) or OpenAI's
``retry-after-ms`` from a 429 or 503 and holds the next request of the same model until
then, at most ``max_wait`` seconds, so a provider asking for minutes costs a bounded wait
and then a failure the conversation reports.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

import httpx2 as httpx

from avatar_shared.retry_after import retry_after_seconds

log = logging.getLogger(__name__)

#: Statuses whose Retry-After says when to come back.
_ASKS_TO_WAIT = frozenset({429, 503})


class RetryAfterGate:
    def __init__(
        self,
        max_wait: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_wait = max_wait
        self._clock = clock
        self._wall_clock = wall_clock
        self._open_at = 0.0

    def wait_seconds(self) -> float:
        return max(0.0, self._open_at - self._clock())

    async def hold(self, request: httpx.Request) -> None:
        """Request hook: wait until the provider's last Retry-After has passed."""
        if (wait := self.wait_seconds()) > 0:
            log.info("waiting for the provider's Retry-After", extra={"seconds": round(wait, 3)})
            await asyncio.sleep(wait)

    async def note(self, response: httpx.Response) -> None:
        """Response hook: remember when a 429 or 503 said to come back."""
        if response.status_code not in _ASKS_TO_WAIT:
            return
        seconds = _retry_after_ms(response.headers.get("retry-after-ms"), self.max_wait)
        if seconds is None:
            seconds = retry_after_seconds(
                response.headers.get("retry-after"), now=self._wall_clock(), cap=self.max_wait
            )
        if seconds:
            self._open_at = max(self._open_at, self._clock() + seconds)


def _retry_after_ms(value: str | None, cap: float) -> float | None:
    try:
        seconds = float(value) / 1000 if value else math.nan
    except ValueError:
        return None
    return min(cap, max(0.0, seconds)) if math.isfinite(seconds) else None


def http_client(gate: RetryAfterGate) -> httpx.AsyncClient:
    """What livekit-plugins-openai builds for itself, plus the gate. Each request carries
    the session's per-attempt timeout, which replaces the client's default."""
    return httpx.AsyncClient(
        follow_redirects=True,
        limits=httpx.Limits(max_connections=50, max_keepalive_connections=50, keepalive_expiry=120),
        event_hooks={"request": [gate.hold], "response": [gate.note]},
    )
