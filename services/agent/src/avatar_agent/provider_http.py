"""The HTTP client of the agent's OpenAI-compatible LLM: a provider's Retry-After is
honoured, a reply the provider cut short is known as such (:class:`FinishReasons`), and
a stream that sends bytes but no words fails in time (:func:`data_deadline`).

livekit-agents retries a failed LLM request after intervals of its own (0.1 s, then 2 s),
whatever the provider asked for. :class:`RetryAfterGate` sits in the client's event
hooks: it reads ``Retry-After`` (seconds or an HTTP date) or OpenAI's
``retry-after-ms`` from a 429 or 503 and holds the next request of the same model until
then, at most ``max_wait`` seconds, so a provider asking for minutes costs a bounded wait
and then a failure the conversation reports.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from typing import Any

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


#: ``finish_reason`` values that mean the provider cut the reply short.
CUT_SHORT = frozenset({"length", "content_filter"})
#: A streamed line longer than this is not kept whole (nor read for its finish_reason).
_MAX_LINE = 64 * 1024
_REMEMBERED = 64


class FinishReasons:
    """How each speech's streamed completion ended, when the provider cut it short.

    livekit-agents drops ``finish_reason``, so a reply cut at the provider's token limit
    (``length``) or by its content filter (``content_filter``) looked like one that was
    complete. :meth:`watch` is a response hook: it reads the completion's Server-Sent
    Events as the OpenAI SDK receives them and notes a cut-short reason under the speech
    being generated (the request runs in the speech's task). The agent's ``llm_node``
    takes it when the stream ends (:meth:`pop`) and reports the reply as failed."""

    def __init__(self, speech_id: Callable[[], str | None]) -> None:
        self._speech_id = speech_id
        self._reasons: OrderedDict[str, str] = OrderedDict()

    async def watch(self, response: httpx.Response) -> None:
        speech_id = self._speech_id()
        if speech_id is None or not response.request.url.path.endswith("/chat/completions"):
            return
        response.stream = _Tap(response.stream, lambda reason: self._note(speech_id, reason))

    def pop(self, speech_id: str) -> str | None:
        return self._reasons.pop(speech_id, None)

    def _note(self, speech_id: str, reason: str) -> None:
        self._reasons[speech_id] = reason
        while len(self._reasons) > _REMEMBERED:
            self._reasons.popitem(last=False)


class _Lines:
    """The complete lines of a stream read chunk by chunk. An unfinished line is held up
    to :data:`_MAX_LINE` bytes; past that only its first ``keep`` bytes are."""

    def __init__(self, keep: int = 0) -> None:
        self._keep = keep
        self._rest = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        *lines, self._rest = (self._rest + chunk).split(b"\n")
        if len(self._rest) > _MAX_LINE:
            self._rest = self._rest[: self._keep]
        return lines


class _Tap(httpx.AsyncByteStream):
    """The response's bytes, unchanged, read line by line for a cut-short finish_reason."""

    def __init__(self, inner: Any, found: Callable[[str], None]) -> None:
        self._inner = inner
        self._found = found
        self._lines = _Lines()  # a line too long to keep is not read

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            self._scan(chunk)
            yield chunk

    def _scan(self, chunk: bytes) -> None:
        for line in self._lines.feed(chunk):
            if line.startswith(b"data:") and b"finish_reason" in line:
                self._read(line[5:])

    def _read(self, data: bytes) -> None:
        try:
            choices = json.loads(data).get("choices") or []
        except (ValueError, AttributeError, RecursionError):
            return  # the OpenAI SDK says what it makes of a broken line
        for choice in choices:
            reason = choice.get("finish_reason") if isinstance(choice, dict) else None
            if reason in CUT_SHORT:
                self._found(reason)

    async def aclose(self) -> None:
        await self._inner.aclose()


async def data_deadline(response: httpx.Response) -> None:
    """Response hook: a streamed completion must send a ``data:`` line within the
    request's read timeout of the last one.

    httpx's read timeout is per read, so a server (or a proxy before it) sending SSE
    comments (``: keep-alive``) and no words would hold the reply for ever; so would one
    dripping a line that never ends. Past the deadline the stream raises
    ``httpx.ReadTimeout``, as a silent server's would: the attempt fails as timed out
    and is retried if nothing was said yet."""
    if not response.headers.get("content-type", "").startswith("text/event-stream"):
        return
    read = response.request.extensions.get("timeout", {}).get("read")
    if read:
        response.stream = _DataDeadline(response.stream, float(read))


class _DataDeadline(httpx.AsyncByteStream):
    """The response's bytes, unchanged, failing once no ``data:`` line completes in time."""

    def __init__(self, inner: Any, seconds: float) -> None:
        self._inner = inner
        self._seconds = seconds
        self._lines = _Lines(keep=len(b"data:"))  # only a line's start matters here

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunks = aiter(self._inner)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._seconds
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                return
            except TimeoutError:
                message = f"no data line from the provider within {self._seconds:g} s"
                raise httpx.ReadTimeout(message) from None
            if self._has_data_line(chunk):
                deadline = loop.time() + self._seconds
            yield chunk

    def _has_data_line(self, chunk: bytes) -> bool:
        return any(line.startswith(b"data:") for line in self._lines.feed(chunk))

    async def aclose(self) -> None:
        await self._inner.aclose()


def http_client(gate: RetryAfterGate, finishes: FinishReasons) -> httpx.AsyncClient:
    """What livekit-plugins-openai builds for itself, plus the gate, the finish_reason
    tap and the data-line deadline. Each request carries the session's per-attempt
    timeout, which replaces the client's default."""
    return httpx.AsyncClient(
        follow_redirects=True,
        limits=httpx.Limits(max_connections=50, max_keepalive_connections=50, keepalive_expiry=120),
        event_hooks={
            "request": [gate.hold],
            "response": [gate.note, finishes.watch, data_deadline],
        },
    )
