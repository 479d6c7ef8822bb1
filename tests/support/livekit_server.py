"""A LiveKit server double for RoomService.SendData and DeleteRoom, on a loopback port.

It speaks what livekit-api sends: ``POST /twirp/livekit.RoomService/SendData`` (and
``.../DeleteRoom``) with a protobuf (``application/protobuf``) or JSON body, decoded with
the real ``livekit-protocol`` messages, and checks the bearer token as livekit-server
does: HS256 signed with the secret of the key named in ``iss``, ``nbf``/``exp`` in force,
a video grant with ``roomAdmin`` for the request's room (SendData) or ``roomCreate``
(DeleteRoom, as livekit-server's ``EnsureCreatePermission``). Failures answer in Twirp's JSON
error format: 401 ``unauthenticated``, 403 ``permission_denied``, 400 ``malformed``.
Packets are de-duplicated per room by their nonce as livekit-server does
(:mod:`tests.support.livekit_dedup`): a duplicate is answered 200 and not delivered.
Tests can queue failures, odd answers (a 200 that is not protobuf, an error body that is
not a Twirp error) or delays, make the double accept a packet and then not answer in time
(``stall_after_accepting``), and read every packet delivered.

It is served by aiohttp (whose HTTP parser is compiled), so that in the benchmarks the
double's own parsing weighs as little as possible on the latencies it times.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import jwt
from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from livekit.protocol.room import DeleteRoomRequest, SendDataRequest

from tests.support.http_server import serving_aiohttp
from tests.support.livekit_dedup import PacketDeduper


@dataclass(frozen=True)
class Received:
    request: SendDataRequest
    traceparent: str | None
    at: float  # time.perf_counter() when the call reached the double (it was accepted)


@dataclass
class LiveKitDouble:
    keys: dict[str, str]  # API key -> secret
    received: list[Received] = field(default_factory=list)  # delivered to the room
    deleted_rooms: list[str] = field(default_factory=list)
    duplicates: list[Received] = field(default_factory=list)  # dropped by the nonce check
    stall_after_accepting: float = 0.0  # seconds to hold the answer after delivering
    fail_with: list[int] = field(default_factory=list)  # statuses for the next calls
    # (status, content type, body) for the next calls, the packet not delivered: what a
    # proxy or a wrong LIVEKIT_URL answers
    odd_answers: list[tuple[int, str, bytes]] = field(default_factory=list)
    unavailable_rooms: set[str] = field(default_factory=set)  # 503 for these rooms
    delay: float = 0.0
    attempts: int = 0
    port: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    _dedupers: dict[str, PacketDeduper] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _error(self, status: int, code: str, msg: str) -> web.Response:
        return web.json_response({"code": code, "msg": msg}, status=status)

    def _claims(self, header: str | None) -> dict[str, object] | web.Response:
        if not header or not header.startswith("Bearer "):
            return self._error(401, "unauthenticated", "no authorization")
        token = header.removeprefix("Bearer ")
        try:
            issuer = jwt.decode(token, options={"verify_signature": False}).get("iss")
            secret = self.keys.get(str(issuer))
            if secret is None:
                return self._error(401, "unauthenticated", "unknown API key")
            claims = jwt.decode(
                token, secret, algorithms=["HS256"], options={"require": ["exp", "nbf", "iss"]}
            )
        except jwt.PyJWTError as exc:
            return self._error(401, "unauthenticated", f"invalid token: {exc}")
        return dict(claims)

    def _authorize(self, header: str | None, room: str) -> web.Response | None:
        claims = self._claims(header)
        if isinstance(claims, web.Response):
            return claims
        video = claims.get("video") or {}
        assert isinstance(video, dict)
        if not video.get("roomAdmin") or video.get("room") != room:
            return self._error(403, "permission_denied", "requires roomAdmin for this room")
        return None

    async def _delete_room(self, request: web.Request) -> web.Response:
        message = DeleteRoomRequest()
        try:
            body = await request.read()
            if request.headers.get("content-type", "").startswith("application/json"):
                json_format.Parse(body, message)
            else:
                message.ParseFromString(body)
        except (DecodeError, json_format.ParseError):
            return self._error(400, "malformed", "cannot decode DeleteRoomRequest")
        claims = self._claims(request.headers.get("authorization"))
        if isinstance(claims, web.Response):
            return claims
        video = claims.get("video") or {}
        assert isinstance(video, dict)
        if not video.get("roomCreate"):
            return self._error(403, "permission_denied", "requires roomCreate")
        self.deleted_rooms.append(message.room)
        return web.Response(body=b"", content_type="application/protobuf")

    async def _send_data(self, request: web.Request) -> web.Response:
        arrived_at = time.perf_counter()  # when the call reached us, before our own checks
        self.attempts += 1
        body = await request.read()
        content_type = request.headers.get("content-type", "")
        message = SendDataRequest()
        try:
            if content_type.startswith("application/protobuf"):
                message.ParseFromString(body)
            elif content_type.startswith("application/json"):
                json_format.Parse(body, message)
            else:
                return self._error(415, "malformed", "unsupported content type")
        except (DecodeError, json_format.ParseError):
            return self._error(400, "malformed", "cannot decode SendDataRequest")
        if denied := self._authorize(request.headers.get("authorization"), message.room):
            return denied
        if self.delay:
            await asyncio.sleep(self.delay)
        if message.room in self.unavailable_rooms:
            return self._error(503, "unavailable", "injected for this room")
        if self.odd_answers:
            status, content_type, body = self.odd_answers.pop(0)
            return web.Response(status=status, body=body, content_type=content_type)
        if self.fail_with:
            status = self.fail_with.pop(0)
            return self._error(
                status, "unavailable" if status >= 500 else "invalid_argument", "injected"
            )
        got = Received(message, request.headers.get("traceparent"), arrived_at)
        deduper = self._dedupers.setdefault(message.room, PacketDeduper())
        if deduper.is_duplicate(message.nonce):
            self.duplicates.append(got)
        else:
            self.received.append(got)
            self.arrived.set()
        if self.stall_after_accepting:
            await asyncio.sleep(self.stall_after_accepting)
        # An empty SendDataResponse.
        return web.Response(body=b"", content_type="application/protobuf")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/twirp/livekit.RoomService/SendData", self._send_data)
        app.router.add_post("/twirp/livekit.RoomService/DeleteRoom", self._delete_room)
        return app


@asynccontextmanager
async def running_livekit(double: LiveKitDouble) -> AsyncIterator[LiveKitDouble]:
    async with serving_aiohttp(double.app()) as port:
        double.port = port
        yield double


async def _received(double: LiveKitDouble, request: web.Request) -> web.Response:
    """The double's own route (not LiveKit's), for a benchmark in another process."""
    return web.json_response(
        [
            [r.request.room, r.request.nonce.hex(), r.request.data.decode(), r.at]
            for r in double.received
        ]
    )


async def _json_count(double: LiveKitDouble) -> web.Response:
    return web.json_response(len(double.received))


async def _clear(double: LiveKitDouble, request: web.Request) -> web.Response:
    double.received.clear()
    double.duplicates.clear()
    return web.json_response({})


def serve_forever(port: int, key: str, secret: str) -> None:
    """``python -m tests.support.livekit_server PORT KEY SECRET``: the double as a process
    of its own (``time.perf_counter`` is the machine's monotonic clock, so its arrival
    times compare with other processes')."""
    double = LiveKitDouble(keys={key: secret}, port=port)
    app = double.app()
    app.router.add_get("/_double/received", lambda r: _received(double, r))
    app.router.add_post("/_double/clear", lambda r: _clear(double, r))
    app.router.add_get("/_double/count", lambda r: _json_count(double))
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    import sys

    serve_forever(int(sys.argv[1]), sys.argv[2], sys.argv[3])
