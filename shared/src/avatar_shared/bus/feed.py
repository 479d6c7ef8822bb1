"""A pull consumer's messages as they are stored: pull requests kept outstanding.

nats-py's ``fetch(batch=N)`` asks for N messages and, once one has come, waits for the
rest until its timeout: on a quiet partition every message would wait out that timeout,
or each message would cost a request of its own. :class:`PullFeed` does what the Go
client's ``Consume`` does instead. It keeps requests for up to ``batch`` messages
outstanding (a new one once half of what was asked for has come), so the server hands
over each message the moment the stream stores it, and :meth:`PullFeed.take` returns
what has arrived, waiting only when nothing has.

Requests carry an expiry and an idle heartbeat. The server answers an expired request
with a 408 status that says how many messages it still owed; a feed that hears nothing,
not even a heartbeat, for two heartbeat intervals takes its requests for lost (the
server restarted, the connection was replaced) and asks again.

:meth:`PullFeed.take` hands out :class:`Delivered` messages: a delivered message that
says whether it was delivered before, and settles itself (a
:class:`~avatar_shared.bus.processing.Delivery`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Mapping

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

log = logging.getLogger(__name__)

_STATUS = "Status"
_PENDING = "Nats-Pending-Messages"
_HEARTBEAT = "100"
_EXPIRED = "408"


class Delivered:
    __slots__ = ("_msg",)

    def __init__(self, msg: Msg) -> None:
        self._msg = msg

    @property
    def subject(self) -> str:
        return self._msg.subject

    @property
    def data(self) -> bytes:
        return self._msg.data

    @property
    def headers(self) -> Mapping[str, str] | None:
        return self._msg.headers

    @property
    def redelivered(self) -> bool:
        return self._msg.metadata.num_delivered > 1

    async def ack(self) -> None:
        await self._msg.ack()

    async def nak(self, delay: float | None = None) -> None:
        await self._msg.nak(delay=delay)

    async def term(self) -> None:
        await self._msg.term()


class PullFeed:
    def __init__(
        self,
        nc: NATS,
        stream: str,
        consumer: str,
        *,
        batch: int,
        expires: float = 10.0,
        heartbeat: float = 1.0,
    ) -> None:
        self._nc = nc
        self._subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._batch = batch
        self._request = json.dumps(
            {
                "batch": batch,
                "expires": int(expires * 1e9),
                "idle_heartbeat": int(heartbeat * 1e9),
            }
        ).encode()
        self._heartbeat = heartbeat
        self._inbox = nc.new_inbox()
        self._ready: deque[Msg] = deque()
        self._woken = asyncio.Event()
        self._owed = 0  # messages the outstanding requests may still deliver
        self._heard = 0.0  # loop time of the last message, status or request
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(self._inbox, cb=self._arrived)

    async def stop(self) -> None:
        """Stop listening; messages delivered and not taken come back to the consumer's
        next reader (their ack wait runs out, or the next owner recreates the consumer)."""
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    async def take(self, wait: float) -> list[Delivered]:
        """What has arrived, up to ``batch`` messages, in stream order; if nothing has,
        the first to come within ``wait`` seconds (and whatever came with it)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            await self._top_up(loop.time())
            remaining = deadline - loop.time()
            if self._ready or remaining <= 0:
                break
            self._woken.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(remaining, self._heartbeat)):
                    await self._woken.wait()
        return [Delivered(self._ready.popleft()) for _ in range(min(self._batch, len(self._ready)))]

    async def _top_up(self, now: float) -> None:
        if self._owed > 0 and now - self._heard > 2 * self._heartbeat:
            log.info("pull requests on %s went unanswered; asking again", self._subject)
            self._owed = 0
        if self._owed <= self._batch // 2:
            await self._nc.publish(self._subject, self._request, reply=self._inbox)
            self._owed += self._batch
            self._heard = now

    async def _arrived(self, msg: Msg) -> None:
        self._heard = asyncio.get_running_loop().time()
        status = msg.headers.get(_STATUS) if msg.headers else None
        if status is None:
            self._owed = max(0, self._owed - 1)
            self._ready.append(msg)
        elif status == _HEARTBEAT:
            return
        else:  # a request ended: expired (408) or refused (409: leadership change, ...)
            pending = (msg.headers or {}).get(_PENDING)
            self._owed = max(0, self._owed - int(pending)) if pending else 0
            if status != _EXPIRED:
                log.warning(
                    "pull request on %s ended: %s %s",
                    self._subject,
                    status,
                    (msg.headers or {}).get("Description", ""),
                )
        self._woken.set()
