"""The room inspector: "why didn't it wave?", answered from the bus as it happens.

Off unless ``ACTIONS_INSPECTOR=true``. Served on the actions service's health port:

- ``GET /inspector``: the page (plain HTML and JavaScript, no build step);
- ``GET /inspector/api/rooms``: live rooms, newest first;
- ``GET /inspector/api/rooms/{room}/events``: Server-Sent Events, the room's recent history
  and then each event as it is published: agent and user states, speeches, tags (valid or
  not), every decision with its outcome and reason (a published one is the packet sent),
  each with the trace id of its turn and, with ``ACTIONS_INSPECTOR_TRACE_URL``, a link to
  the trace UI.

Every request needs an API key of the access policy (``X-API-Key``, the HTTP services'
own mechanism), and a key sees only the rooms of avatars its rules let it use, as the
token service would: a room whose avatar is not known yet, only a key that may use every
avatar (``avatars = ["*"]``); another room is "not found", whether it exists or not.
``ACTIONS_INSPECTOR_ANONYMOUS=true`` lets anyone in and shows every room, which only
development mode allows (``make run`` binds loopback and sets it). The feed is a core NATS
subscription to every room's events (``avatars.v1.*.*.*``), so each replica sees all
rooms; history is what this replica has seen since it started, bounded per room and in
rooms (the least recently active room goes first).
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict, deque
from collections.abc import AsyncGenerator, Callable, Mapping
from importlib import resources
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from avatar_shared.bus import Bus
from avatar_shared.events import InvalidEvent, decode_event
from avatar_shared.subjects import PREFIX
from avatar_shared.web.auth import Authenticator
from avatar_shared.web.errors import ApiError
from avatar_shared.web.policy import Policy

#: Events kept per room, and rooms kept, for the history shown on opening a room: about
#: 30,000 events of well under 1 KiB, some 20 MiB at most beside the service's own bound.
PER_ROOM = 300
MAX_ROOMS = 100
#: A room listening to the live feed gets at most this many events queued.
LISTENER_QUEUE = 1000
#: Live streams open at once, per replica: each holds a connection of the health port,
#: whose probes must still get in (the server takes 1,000 connections).
MAX_STREAMS = 32
_TRACEPARENT = TraceContextTextMapPropagator()
_SESSION_EVENTS = frozenset({"session_started", "session_ended"})
#: Whether the caller may see a room of this avatar (None: not known yet).
Sees = Callable[[str | None], bool]


def trace_id_of(headers: Mapping[str, str] | None) -> str | None:
    """The trace id of a W3C ``traceparent`` header, if valid (it goes into a link)."""
    context = _TRACEPARENT.extract(dict(headers or {}))
    span = trace.get_current_span(context).get_span_context()
    return trace.format_trace_id(span.trace_id) if span.is_valid else None


class RoomLog:
    """What happened in each room, bounded, and who is listening to it."""

    def __init__(self, *, per_room: int = PER_ROOM, max_rooms: int = MAX_ROOMS) -> None:
        self._per_room = per_room
        self._max_rooms = max_rooms
        self._rooms: OrderedDict[str, deque[dict[str, Any]]] = OrderedDict()
        self._listeners: dict[str, set[asyncio.Queue[dict[str, Any]]]] = {}

    def add(self, entry: dict[str, Any]) -> None:
        room = str(entry["room"])
        history = self._rooms.get(room)
        if history is None:
            history = self._rooms[room] = deque(maxlen=self._per_room)
            if len(self._rooms) > self._max_rooms:
                self._rooms.popitem(last=False)
        self._rooms.move_to_end(room)
        history.append(entry)
        for queue in self._listeners.get(room, ()):
            if queue.full():
                queue.get_nowait()  # a slow browser loses its oldest, never blocks the feed
            queue.put_nowait(entry)

    def rooms(self) -> list[dict[str, Any]]:
        listed = []
        for room, history in reversed(self._rooms.items()):
            last = history[-1]
            sessions = (e["type"] for e in reversed(history) if e["type"] in _SESSION_EVENTS)
            ended = next(sessions, None) == "session_ended"  # a named room may start again
            avatar = self.avatar_of(room)
            listed.append({"room": room, "avatar_id": avatar, "last": last["ts"], "ended": ended})
        return listed

    def avatar_of(self, room: str) -> str | None:
        """The avatar of the room's latest event that names one."""
        history = self._rooms.get(room, ())
        return next((e["avatar_id"] for e in reversed(history) if e.get("avatar_id")), None)

    def history(self, room: str) -> list[dict[str, Any]]:
        return list(self._rooms.get(room, ()))

    def listen(self, room: str) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=LISTENER_QUEUE)
        self._listeners.setdefault(room, set()).add(queue)
        return queue

    def listening(self) -> int:
        return sum(len(queues) for queues in self._listeners.values())

    def leave(self, room: str, queue: asyncio.Queue[dict[str, Any]]) -> None:
        listeners = self._listeners.get(room, set())
        listeners.discard(queue)
        if not listeners:
            self._listeners.pop(room, None)


class Inspector:
    def __init__(
        self,
        bus: Bus,
        authenticator: Authenticator,
        policy: Policy,
        *,
        anonymous: bool = False,
        trace_url: str = "",
        log: RoomLog | None = None,
    ) -> None:
        self._bus = bus
        self._auth = authenticator
        self._policy = policy
        self._anonymous = anonymous
        self._trace_url = trace_url
        self.log = log or RoomLog()
        self._unsubscribe: Any = None
        self._closing = asyncio.Event()

    async def start(self) -> None:
        self._unsubscribe = await self._bus.watch(f"{PREFIX}.*.*.*", self._seen)

    async def close(self) -> None:
        self._closing.set()
        if self._unsubscribe is not None:
            await self._unsubscribe()

    async def _seen(self, data: bytes, headers: Mapping[str, str] | None) -> None:
        try:
            event = decode_event(data)
        except InvalidEvent:  # the consumers count and log it; a live view skips it
            return
        if event is None:
            return
        entry = event.model_dump(mode="json")
        entry["trace_id"] = trace_id_of(headers)
        self.log.add(entry)

    async def _sees(self, request: Request) -> Sees:
        """Which rooms the caller may see, by their avatar."""
        if self._anonymous:
            return lambda avatar: True
        principal = await self._auth.authenticate(request.headers)
        if principal.kind != "api_key":
            raise ApiError(403, "forbidden", "the inspector takes an API key of the access policy")
        # "*" as the avatar matches only a rule for every avatar: an unknown one is theirs.
        return lambda avatar: self._policy.rule_for(principal, avatar or "*") is not None

    def router(self) -> APIRouter:
        router = APIRouter(prefix="/inspector", tags=["inspector"])

        @router.get("", include_in_schema=False)
        async def page() -> HTMLResponse:
            html = resources.files("avatar_actions").joinpath("inspector.html").read_text()
            config = json.dumps({"traceUrl": self._trace_url, "keyNeeded": not self._anonymous})
            return HTMLResponse(html.replace("/*CONFIG*/{}", config))

        @router.get("/api/rooms")
        async def rooms(request: Request) -> JSONResponse:
            sees = await self._sees(request)
            listed = [r for r in self.log.rooms() if sees(r["avatar_id"])]
            return JSONResponse({"rooms": listed}, headers={"Cache-Control": "no-store"})

        @router.get("/api/rooms/{room:path}/events")
        async def events(request: Request, room: str) -> StreamingResponse:
            sees = await self._sees(request)
            if not sees(self.log.avatar_of(room)):
                raise ApiError(404, "not_found", "no such room")
            if self.log.listening() >= MAX_STREAMS:
                raise ApiError(
                    503,
                    "busy",
                    f"{MAX_STREAMS} inspector streams are open on this replica; try later",
                    headers={"Retry-After": "5"},
                )
            return StreamingResponse(
                self._stream(room, sees),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
            )

        return router

    async def _stream(self, room: str, sees: Sees) -> AsyncGenerator[bytes, None]:
        """The room's history, then its events as they come; a named room used again
        for an avatar the caller may not see shows nothing of that session."""

        def shown(entry: dict[str, Any]) -> bool:  # an event without one is the room's
            return sees(entry.get("avatar_id") or self.log.avatar_of(room))

        queue = self.log.listen(room)
        try:
            for entry in filter(shown, self.log.history(room)):
                yield _sse(entry)
            closing = asyncio.ensure_future(self._closing.wait())
            try:
                while not self._closing.is_set():
                    getting = asyncio.ensure_future(queue.get())
                    done, _ = await asyncio.wait(
                        {getting, closing}, timeout=15, return_when=asyncio.FIRST_COMPLETED
                    )
                    if getting in done:
                        if shown(entry := getting.result()):
                            yield _sse(entry)
                        continue
                    getting.cancel()
                    yield b": keep-alive\n\n"  # proxies close idle streams
            finally:
                closing.cancel()
        finally:
            self.log.leave(room, queue)


def _sse(entry: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(entry, separators=(",", ":")).encode() + b"\n\n"
