"""A session's limits, enforced: its maximum length and the user's inactivity timeout.

The token service puts the policy's limits in the agent's dispatch metadata
(``max_session_seconds``, ``inactivity_timeout_seconds``); a dispatch without them (the
local run, a dispatch not made by the token service) gets the agent's own settings.
:class:`Lifecycle` watches the clock: the session ends at its maximum length, or once the
user has given no sign of life (speech, typed text, data) for the inactivity timeout,
counted from the last sign or from the moment the agent stopped talking, whichever is
later: a long reply never makes the user inactive. It calls ``on_limit`` with the reason
(``max_duration`` or ``inactive``) once. No session starts in a room created after the
dispatch's ``start_by`` (:func:`started_too_late`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

MAX_DURATION = "max_duration"
INACTIVE = "inactive"
#: Longest session any policy may set (avatar_shared.web.policy.MAX_SESSION_SECONDS).
_CEILING = 86_400
#: How far LiveKit's clock (a room's creation time) may run ahead of the token service's.
START_SKEW_SECONDS = 30.0


@dataclass(frozen=True)
class SessionLimits:
    max_session_seconds: float
    inactivity_timeout_seconds: float

    def from_metadata(self, metadata: str) -> SessionLimits:
        """The dispatch's limits where it carries valid ones, these (the agent's) elsewhere."""
        value = dispatch_fields(metadata)
        return SessionLimits(
            _seconds(value.get("max_session_seconds"), self.max_session_seconds),
            _seconds(value.get("inactivity_timeout_seconds"), self.inactivity_timeout_seconds),
        )


def dispatch_fields(metadata: str) -> dict[str, object]:
    """The dispatch metadata's JSON object; empty if it is not one (or is too deep, or
    holds a number past int()'s digit limit: json raises ValueError or RecursionError)."""
    try:
        value = json.loads(metadata or "{}")
    except (ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def started_too_late(metadata: str, room_created: float) -> bool:
    """Whether the room was created after the dispatch's ``start_by`` (the end of its
    token's start window, Unix seconds), give or take :data:`START_SKEW_SECONDS`.

    A deleted room comes back when someone joins it again, with the joining token's
    dispatch: a token used again after its session ended (the agent deleted the room at
    a limit) would otherwise start a whole new session, uncounted by the quotas. A job
    that takes over a room created in time (the previous job died) is not late."""
    start_by = dispatch_fields(metadata).get("start_by")
    if not isinstance(start_by, int | float) or isinstance(start_by, bool):
        return False  # the local run, a dispatch not made by the token service
    return room_created > start_by + START_SKEW_SECONDS


def _seconds(value: object, fallback: float) -> float:
    valid = isinstance(value, int | float) and not isinstance(value, bool) and value >= 1
    return min(float(value), _CEILING) if valid else fallback  # type: ignore[arg-type]


class Lifecycle:
    def __init__(
        self,
        limits: SessionLimits,
        on_limit: Callable[[str], Awaitable[None]],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self._on_limit = on_limit
        self._clock = clock
        self._started = clock()
        self._last_sign = self._started
        self._agent_busy = False
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._started = self._last_sign = self._clock()
        self._task = asyncio.create_task(self._watch(), name="session-lifecycle")

    def user_active(self) -> None:
        """The user spoke, typed or sent data."""
        self._last_sign = self._clock()
        self._changed.set()

    def agent_busy(self, busy: bool) -> None:
        """The agent is thinking or speaking (the user is waiting, not away) or stopped."""
        if self._agent_busy and not busy:
            self._last_sign = max(self._last_sign, self._clock())
        self._agent_busy = busy
        self._changed.set()

    def next_limit(self) -> tuple[float, str]:
        """When the session ends if nothing happens, and why."""
        ends = (self._started + self.limits.max_session_seconds, MAX_DURATION)
        if self._agent_busy:
            return ends
        idle = (self._last_sign + self.limits.inactivity_timeout_seconds, INACTIVE)
        return min(ends, idle)

    async def _watch(self) -> None:
        while True:
            at, reason = self.next_limit()
            wait = at - self._clock()
            if wait <= 0:
                log.info("session limit reached", extra={"reason": reason})
                await self._on_limit(reason)
                return
            self._changed.clear()
            try:
                async with asyncio.timeout(wait):
                    await self._changed.wait()
            except TimeoutError:
                pass

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
