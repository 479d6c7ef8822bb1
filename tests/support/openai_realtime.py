"""An OpenAI Realtime API double: the WebSocket protocol livekit-agents' ``RealtimeModel``
speaks, in the text modality the agent uses (``AGENT_LLM=realtime``).

``GET /v1/realtime?model=...`` with ``Authorization: Bearer <key>`` upgrades to a
WebSocket; a wrong key is refused at the upgrade (401), as OpenAI does. The double
answers ``session.created`` on connect, ``session.updated`` to each ``session.update``,
``conversation.item.added`` and ``conversation.item.done`` to each
``conversation.item.create`` (``previous_item_id`` the last item) and
``conversation.item.deleted`` to each ``conversation.item.delete``. A
``response.create`` is answered as OpenAI streams a text reply: ``response.created``
(echoing the request's ``metadata``), ``response.output_item.added`` and
``conversation.item.added`` for the assistant message, ``response.content_part.added``,
one ``response.output_text.delta`` per few characters, ``response.output_text.done``,
``response.content_part.done``, ``response.output_item.done``, ``conversation.item.done``
and ``response.done`` with ``status: "completed"``.

Fault modes for the next responses: ``"failed"`` (a ``response.done`` with status
``failed`` and an error in ``status_details``, as OpenAI reports a server error or an
exhausted rate limit mid-reply, after ``fail_after`` deltas), ``"incomplete:<reason>"``
(the reply ends after ``fail_after`` deltas with status ``incomplete``, as OpenAI ends one
at ``max_output_tokens`` or its ``content_filter``) and ``"error"`` (an ``error`` event in
reply to the ``response.create``, which then creates nothing). Every client event is
recorded.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from tests.support.http_server import serving_aiohttp
from tests.support.openai_compatible import CHUNK, REPLIES

API_KEY = "openai-realtime-test-key-7a2d"
MODEL = "gpt-realtime-mini"


@dataclass
class OpenAIRealtimeDouble:
    api_key: str = API_KEY
    replies: tuple[str, ...] = REPLIES
    #: "failed", "incomplete:<reason>" or "error", for the next responses
    faults: list[str] = field(default_factory=list)
    fail_after: int = 0  # deltas sent before a "failed" or "incomplete" response ends
    received: list[dict[str, Any]] = field(default_factory=list)
    models: list[str] = field(default_factory=list)  # ?model= of each connection
    port: int = 0
    _ids: itertools.count[int] = field(default_factory=itertools.count)
    _replies: itertools.cycle[str] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def responses_requested(self) -> int:
        return sum(1 for event in self.received if event["type"] == "response.create")

    def app(self) -> web.Application:
        app = web.Application()
        app.add_routes([web.get("/v1/realtime", self._websocket)])
        return app

    def _id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids):06d}"

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            error = {"type": "invalid_request_error", "code": "invalid_api_key"}
            return web.json_response({"error": error}, status=401)
        self.models.append(request.query.get("model", ""))
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        items: list[str] = []
        session = {"id": self._id("sess"), "object": "realtime.session", "type": "realtime"}
        await self._send(ws, "session.created", session=session)
        async for message in ws:
            if message.type != WSMsgType.TEXT:
                continue
            event = json.loads(message.data)
            self.received.append(event)
            kind = event.get("type")
            if kind == "session.update":
                await self._send(ws, "session.updated", session=session | event["session"])
            elif kind == "conversation.item.create":
                item = event["item"] | {"object": "realtime.item", "status": "completed"}
                item.setdefault("id", self._id("item"))
                previous = await self._add_item(ws, items, item)
                await self._send(ws, "conversation.item.done", previous_item_id=previous, item=item)
            elif kind == "conversation.item.delete":
                if event["item_id"] in items:
                    items.remove(event["item_id"])
                await self._send(ws, "conversation.item.deleted", item_id=event["item_id"])
            elif kind == "response.create":
                await self._respond(ws, items, event)
        return ws

    async def _send(self, ws: web.WebSocketResponse, kind: str, **body: Any) -> None:
        await ws.send_json({"type": kind, "event_id": self._id("event"), **body})

    async def _add_item(
        self, ws: web.WebSocketResponse, items: list[str], item: dict[str, Any]
    ) -> str | None:
        """``conversation.item.added``; the id of the item it follows."""
        previous = items[-1] if items else None
        items.append(item["id"])
        await self._send(ws, "conversation.item.added", previous_item_id=previous, item=item)
        return previous

    async def _respond(
        self, ws: web.WebSocketResponse, items: list[str], request: dict[str, Any]
    ) -> None:
        fault = self.faults.pop(0) if self.faults else None
        if fault == "error":
            error = {
                "type": "server_error",
                "code": "server_error",
                "message": "The server had an error while processing your request.",
                "event_id": request.get("event_id"),
            }
            await self._send(ws, "error", error=error)
            return
        if self._replies is None:
            self._replies = itertools.cycle(self.replies)
        text = next(self._replies)
        metadata = (request.get("response") or {}).get("metadata")
        response: dict[str, Any] = {
            "id": self._id("resp"),
            "object": "realtime.response",
            "status": "in_progress",
            "metadata": metadata,
            "output": [],
            "output_modalities": ["text"],
        }
        await self._send(ws, "response.created", response=response)
        item: dict[str, Any] = {
            "id": self._id("item"),
            "object": "realtime.item",
            "type": "message",
            "role": "assistant",
            "status": "in_progress",
            "content": [],
        }
        await self._send(
            ws, "response.output_item.added", response_id=response["id"], output_index=0, item=item
        )
        previous = await self._add_item(ws, items, item)
        ids = {"response_id": response["id"], "item_id": item["id"], "output_index": 0}
        part = {"type": "text", "text": ""}
        await self._send(ws, "response.content_part.added", **ids, content_index=0, part=part)
        pieces = [text[i : i + CHUNK] for i in range(0, len(text), CHUNK)]
        if fault is not None:
            pieces = pieces[: self.fail_after]
        for piece in pieces:
            await self._send(ws, "response.output_text.delta", **ids, content_index=0, delta=piece)
        said = "".join(pieces)
        if fault == "failed":
            error = {"type": "server_error", "code": "server_error"}
            response |= {"status": "failed", "status_details": {"type": "failed", "error": error}}
            await self._send(ws, "response.done", response=response)
            return
        await self._send(ws, "response.output_text.done", **ids, content_index=0, text=said)
        part = {"type": "text", "text": said}
        await self._send(ws, "response.content_part.done", **ids, content_index=0, part=part)
        # "incomplete:<reason>": the reply ends early (the output token limit, the filter)
        status = "incomplete" if fault and fault.startswith("incomplete:") else "completed"
        item |= {"status": status, "content": [{"type": "output_text", "text": said}]}
        await self._send(
            ws, "response.output_item.done", response_id=response["id"], output_index=0, item=item
        )
        await self._send(ws, "conversation.item.done", previous_item_id=previous, item=item)
        response |= {"status": status, "output": [item]}
        if fault and status == "incomplete":
            reason = fault.removeprefix("incomplete:")
            response["status_details"] = {"type": "incomplete", "reason": reason}
        await self._send(ws, "response.done", response=response)


@asynccontextmanager
async def running(double: OpenAIRealtimeDouble) -> AsyncIterator[OpenAIRealtimeDouble]:
    async with serving_aiohttp(double.app(), double.port) as port:
        double.port = port
        yield double
