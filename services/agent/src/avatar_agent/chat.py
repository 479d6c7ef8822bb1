"""Typed input from the room (LiveKit's ``lk.chat`` text streams), bounded.

livekit-agents reads each chat message whole (``TextStreamReader.read_all``) and hands it
to the LLM as it is, so a participant could stream megabytes into the agent's memory and
into this turn's and every later turn's prompt: the spend the session controls are there
to cap. :class:`ChatInput` takes its place (the session is started with livekit-agents'
text input off): it reads a message chunk by chunk, keeps at most ``max_chars``
characters (``AGENT_MAX_TEXT_INPUT_CHARS``), stops reading there, and logs and counts
the cut (``avatar.agent.input.truncated``). Then it does what livekit-agents'
default does with a message: interrupt the agent and reply to it as the user's turn.
As there, only the participant the session is linked to (the user) is heard.

Each message is an LLM request, and typing, unlike speaking, has no natural pace: a
script could send hundreds a second. Messages are taken at ``rate``
(``AGENT_TEXT_INPUT_RATE``, a token bucket: a burst, then a steady rate), and each must
arrive whole within :data:`READ_SECONDS`. One past the rate is not read, one still
arriving then is closed there; both are counted (``avatar.agent.input.dropped``, reason
``rate_limited`` or ``too_slow``) and logged, as are cut messages, at most once a minute
per kind (:class:`~avatar_shared.logs.Repeats`: the next line says how many were held
back), since a script typing would otherwise write log lines at its own pace. So the
messages being read at once, the replies they cost and the lines they write are bounded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from livekit import rtc
from opentelemetry import metrics

from avatar_agent.config import DEFAULT_TEXT_LIMITS
from avatar_shared import semconv
from avatar_shared.logs import Repeats
from avatar_shared.ratelimit import RateLimiter

log = logging.getLogger(__name__)

_meter = metrics.get_meter(semconv.INSTRUMENTATION_NAME)
_truncated = _meter.create_counter(
    semconv.METRIC_AGENT_INPUT_TRUNCATED,
    description="Typed messages cut to AGENT_MAX_TEXT_INPUT_CHARS",
)
_dropped = _meter.create_counter(
    semconv.METRIC_AGENT_INPUT_DROPPED,
    description="Typed messages not taken, by reason (rate_limited, too_slow)",
)
#: A typed message is sent at once; one still arriving after this is not waited for.
READ_SECONDS = 30.0


class TextReader(Protocol):
    """What is read of an ``rtc.TextStreamReader``."""

    def __aiter__(self) -> AsyncIterator[str]: ...

    def close(self) -> None: ...


class Session(Protocol):
    """What is used of an ``AgentSession``."""

    def _claim_user_turn(self) -> AbstractAsyncContextManager[None]: ...

    def interrupt(self) -> Awaitable[None]: ...

    def generate_reply(self, *, user_input: str) -> object: ...


async def read_bounded(reader: TextReader, max_chars: int) -> tuple[str, bool]:
    """The message's first ``max_chars`` characters, and whether there were more. Past
    them the reader is closed: the rest is not even received."""
    text = ""
    async for chunk in reader:
        text += chunk
        if len(text) > max_chars:
            reader.close()
            return text[:max_chars], True
    return text, False


class ChatInput:
    def __init__(
        self,
        session: Session,
        linked: Callable[[], str | None],
        *,
        max_chars: int,
        rate: str = DEFAULT_TEXT_LIMITS.text_input_rate,
        read_seconds: float = READ_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
        self._linked = linked
        self._max_chars = max_chars
        self._read_seconds = read_seconds
        self._rate = RateLimiter(rate, clock=clock, max_keys=1)
        self._lines = Repeats(clock=clock)
        self._tasks: set[asyncio.Task[None]] = set()

    def on_stream(self, reader: rtc.TextStreamReader, participant_identity: str) -> None:
        """The room's ``lk.chat`` handler."""
        linked = self._linked()
        if linked is not None and participant_identity != linked:
            reader.close()  # not the user's: nobody reads it, free its subscription
            return
        if not self._rate.hit("user").allowed:
            reader.close()
            self._drop("rate_limited", participant_identity)
            return
        task = asyncio.create_task(self._take(reader, participant_identity))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _drop(self, reason: str, participant_identity: str) -> None:
        _dropped.add(1, {semconv.REASON: reason})
        self._warn(
            reason,
            "typed message not taken: %s",
            reason,
            participant=participant_identity,
            reason=reason,
        )

    def _warn(self, kind: str, message: str, *args: object, **extra: object) -> None:
        """A warning the user's typing provokes: a line a minute per ``kind`` at most."""
        held = self._lines.allow(kind)
        if held is not None:
            log.warning(message, *args, extra=extra | ({"repeated": held} if held else {}))

    async def _take(self, reader: TextReader, participant_identity: str) -> None:
        try:
            async with asyncio.timeout(self._read_seconds):
                text, cut = await read_bounded(reader, self._max_chars)
        except rtc.StreamError as exc:  # aborted by the sender, the room left mid-message
            self._warn("not_whole", "typed message not read whole: %s", exc)
            return
        except TimeoutError:
            reader.close()
            self._drop("too_slow", participant_identity)
            return
        if cut:
            _truncated.add(1)
            self._warn(
                "cut",
                "typed message cut to its first %d characters",
                self._max_chars,
                participant=participant_identity,
            )
        if not text.strip():
            return
        async with self._session._claim_user_turn():
            await self._session.interrupt()
            self._session.generate_reply(user_input=text)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
