"""uvicorn's h11 protocol with deadlines for slow clients, refusing in JSON.

uvicorn arms no timer on a new connection and disarms its keep-alive timer on any byte,
so a client sending a header line now and then holds a connection (and a file
descriptor) for as long as it likes. Here every wait for a request's headers, on a new
connection or between requests, must end within ``header_timeout`` seconds or the
connection is closed. Bodies are not covered: routes read them with a size limit, and
:func:`~avatar_shared.web.body.read_body` bounds their time.

Nor does uvicorn bound a client that stops reading the answer: the answer's unsent bytes
wait in the connection for ever (a 30 MiB bundle, 20 such clients: 600 MB). Here a
connection holds at most :data:`WRITE_BUFFER_BYTES` before writing waits for the client,
and one whose writing has waited ``send_timeout`` seconds without the client taking any
of it is aborted. Routes with large answers send them in slices of that size.

uvicorn answers two refusals itself, in plain text: a request h11 cannot parse (a
malformed request line or header, headers still unfinished after 16 KiB, a broken
chunked body) and a request past ``limit_concurrency``. Here they are JSON like every
other answer: ``400 {"error": "bad_request"}`` and ``503 {"error": "overloaded"}`` with
``Retry-After``, both closing the connection.

A request with both ``Content-Length`` and ``Transfer-Encoding`` is refused the same way
(400, connection closed). h11 reads such a body by ``Transfer-Encoding`` and keeps the
connection open, so the bytes a proxy reading ``Content-Length`` sent as body became the
next request on it: the desync behind request smuggling. RFC 9112 (section 6.1) lets a
server refuse such a request, and requires it to close the connection. A request of any
HTTP version but 1.0 and 1.1 (h11 reads ``PRI * HTTP/2.0``, HTTP/2's preface, as a
request) is ``505 {"error": "http_version_not_supported"}``, closing the connection. A
target in absolute form (``GET http://host/path``) is routed by its path, as RFC 9112
requires a server to accept it (uvicorn took the whole URL for the path: 404).

Each refusal, and each connection closed for a request's headers not finishing in time
(an idle keep-alive connection is not counted) or for a client not reading, is counted in
``avatar.http.server.refused`` by ``avatar.reason``: none of them reaches the app, its
spans or its request metrics. uvicorn's warning per malformed request goes through
:class:`~avatar_shared.logs.Repeats` (``serve`` installs it): a line a minute at most.
An ``Upgrade`` this server does not speak (``h2c`` from ``curl --http2``, ``websocket``)
is ignored, as RFC 9110 (section 7.8) allows, and the request served over HTTP/1.1,
without uvicorn's two warnings per request that it cannot upgrade.
"""

from __future__ import annotations

import asyncio
import functools
import json
from typing import Any
from urllib.parse import unquote

import h11
from opentelemetry import metrics
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from avatar_shared import semconv
from avatar_shared.telemetry import Tally, tally
from avatar_shared.web.guard import SECURITY_HEADERS, json_headers, send_json

_BAD_REQUEST = json.dumps({"error": "bad_request", "message": "malformed HTTP request"}).encode()
_FRAMED_TWICE = json.dumps(
    {
        "error": "bad_request",
        "message": "both Content-Length and Transfer-Encoding: the body's length is ambiguous",
    }
).encode()
_OTHER_VERSION = json.dumps(
    {"error": "http_version_not_supported", "message": "only HTTP/1.1 (and 1.0) is served"}
).encode()
_OVERLOADED = json.dumps(
    {"error": "overloaded", "message": "too many requests in progress; retry shortly"}
).encode()


#: What a refusal says besides its JSON body: it ends the connection; and, as it never
#: reaches the response guard, the guard's headers.
_CLOSING = ((b"connection", b"close"), *SECURITY_HEADERS)


#: Unsent bytes a connection may hold before writing waits for the client (asyncio's
#: default is 64 KiB): with answers sent in slices of at most this, a client that does
#: not read holds ~2x this of the process's memory, not a whole answer.
WRITE_BUFFER_BYTES = 16 * 1024


@functools.cache
def _refusals() -> Tally:
    meter = metrics.get_meter(semconv.INSTRUMENTATION_NAME)
    description = "Requests and connections the HTTP server refused before the app, by reason"
    return tally(meter, semconv.METRIC_HTTP_REFUSED, description)


def _refused(reason: str) -> None:
    _refusals().add(1, {semconv.REASON: reason})


class BoundedH11(H11Protocol):
    header_timeout = 10.0
    send_timeout = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None
        self._send_deadline: asyncio.TimerHandle | None = None
        # The concurrency check is ours (``_admit``), so that its refusal is JSON.
        self._capacity = self.limit_concurrency
        self.limit_concurrency = None
        self._app = self.app
        self.app = self._admit

    async def _admit(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not scope["raw_path"].startswith(b"/"):
            _origin_form(scope)
        names = {name for name, _ in scope["headers"]}
        if b"transfer-encoding" in names and b"content-length" in names:
            _refused("bad_request")
            await send_json(send, 400, _FRAMED_TWICE, _CLOSING)
            return
        if scope["http_version"] not in ("1.1", "1.0"):
            _refused("http_version_not_supported")
            await send_json(send, 505, _OTHER_VERSION, _CLOSING)
            return
        # Counted as uvicorn counts: this connection and this request's task included.
        busy = self._capacity is not None and (
            len(self.connections) > self._capacity or len(self.tasks) > self._capacity
        )
        if not busy:
            await self._app(scope, receive, send)
            return
        _refused("overloaded")
        await send_json(send, 503, _OVERLOADED, (*_CLOSING, (b"retry-after", b"1")))

    def _unsupported_upgrade_warning(self) -> None:
        pass  # an Upgrade it does not speak: ignored, the request served over HTTP/1.1

    def send_400_response(self, msg: str) -> None:
        _refused("bad_request")
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):  # nothing answered yet
            response = h11.Response(
                status_code=400,
                headers=[*json_headers(_BAD_REQUEST), *_CLOSING],
                reason=b"Bad Request",
            )
            self.transport.write(self.conn.send(response))
            self.transport.write(self.conn.send(h11.Data(data=_BAD_REQUEST)))
            self.transport.write(self.conn.send(h11.EndOfMessage()))
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        transport.set_write_buffer_limits(high=WRITE_BUFFER_BYTES)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._resumed()
        super().connection_lost(exc)

    # --- a client that stops reading: the answer waits for it, at most send_timeout ---

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._send_deadline is None:
            self._send_deadline = self.loop.call_later(self.send_timeout, self._stalled)

    def resume_writing(self) -> None:
        self._resumed()
        super().resume_writing()

    def _resumed(self) -> None:
        if self._send_deadline is not None:
            self._send_deadline.cancel()
            self._send_deadline = None

    def _stalled(self) -> None:
        self._send_deadline = None
        _refused("send_timeout")
        if not self.transport.is_closing():
            self.transport.abort()  # close() would wait to flush what it cannot send

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not None and not self.cycle.response_complete:
            self._disarm()  # the headers of a request are in

    def on_response_complete(self) -> None:
        self._arm()  # before the base class looks at pipelined requests
        super().on_response_complete()

    def _arm(self) -> None:
        self._disarm()
        self._header_deadline = self.loop.call_later(self.header_timeout, self._expire)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _expire(self) -> None:
        self._header_deadline = None
        waiting = self.cycle is None or self.cycle.response_complete
        if waiting and not self.transport.is_closing():
            if self.conn.trailing_data[0]:  # part of a request, not an idle keep-alive
                _refused("header_timeout")
            self.transport.close()


def _origin_form(scope: Scope) -> None:
    """A request target in absolute form (``GET http://host/path``, as sent to a proxy):
    RFC 9112 (section 3.2.2) has a server accept it, so its path is routed as the path
    (the host in it is not used, like the Host header). Any other form keeps its target
    (``*``, ``host:443``) and is not found."""
    scheme, found, rest = scope["raw_path"].partition(b"://")
    if not found or scheme.lower() not in (b"http", b"https"):
        return
    slash = rest.find(b"/")
    raw_path = rest[slash:] if slash >= 0 else b"/"
    scope["raw_path"] = raw_path
    scope["path"] = unquote(raw_path.decode("ascii"))


def bounded_h11(header_timeout: float, send_timeout: float) -> type[BoundedH11]:
    """The protocol class for ``uvicorn.Config(http=...)`` with these deadlines."""
    deadlines = {"header_timeout": header_timeout, "send_timeout": send_timeout}
    return type("BoundedH11", (BoundedH11,), deadlines)
