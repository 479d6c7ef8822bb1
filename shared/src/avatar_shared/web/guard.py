"""The last line of the HTTP services' response contract.

Every response leaves with the security headers, and an exception nothing else handled
becomes a JSON 500 (``internal_error``, naming the trace id it was logged under) instead
of Starlette's plain-text page and a reset connection. The guard sits inside the CORS
middleware, so a browser can read that 500 like any other answer, and inside the
server span, which records the exception.

A client that hangs up before its request is read (``ClientDisconnect``) is not a server
error: it is logged at INFO and answered 499 (nginx's "client closed request"), which
reaches nobody but tells the span and the request metrics what happened.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

SECURITY_HEADERS = ((b"x-content-type-options", b"nosniff"),)
CLIENT_CLOSED = 499


def _internal_error_body(trace_id: str) -> bytes:
    message = "unexpected error"
    if trace_id:
        message += f"; logged under trace id {trace_id}"
    return json.dumps({"error": "internal_error", "message": message}).encode()


def json_headers(body: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]


async def send_json(
    send: Send, status: int, body: bytes, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    """A whole JSON answer through an ASGI ``send``."""
    start = {"type": "http.response.start", "status": status}
    await send({**start, "headers": [*json_headers(body), *headers]})
    await send({"type": "http.response.body", "body": body})


class ResponseGuard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", ()), *SECURITY_HEADERS]
            await send(message)

        try:
            await self.app(scope, receive, guarded_send)
        except ClientDisconnect:
            log.info("client closed the connection before its request was read")
            if not started:
                body = b'{"error":"client_closed_request","message":"client went away"}'
                await send_json(guarded_send, CLIENT_CLOSED, body)
        except Exception as exc:
            span = trace.get_current_span()
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            log.exception("unhandled error", extra={"method": scope["method"]})
            if started:  # part of an answer is on the wire: only closing can end it
                raise
            context = span.get_span_context()
            body = _internal_error_body(
                format(context.trace_id, "032x") if context.is_valid else ""
            )
            await send_json(guarded_send, 500, body)
