"""A Cartesia TTS double: the WebSocket protocol livekit-plugins-cartesia speaks.

``GET /tts/websocket?cartesia_version=...`` with the ``X-API-Key`` header upgrades to a
WebSocket. The client sends JSON generation requests (``model_id``, ``voice``,
``output_format`` with ``pcm_s16le`` at ``sample_rate``, ``context_id``, ``transcript``,
``continue``); for each transcript the double answers ``chunk`` messages of base64 PCM
(silence, 50 ms per character) tagged with the ``context_id``, and once the client sends
``continue: false``, a ``done`` message. A wrong key is refused at the upgrade (401), as
Cartesia does. Every transcript is recorded per context, so a test can read exactly what
would have been spoken. ``stall`` makes it take transcripts and answer nothing, as a
server that hangs mid-session; ``error`` answers each with an ``error`` message, as
Cartesia reports a generation it could not do.
"""

from __future__ import annotations

import base64
import json
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web

from tests.support.http_server import serving_aiohttp

API_KEY = "cartesia-test-key-5c1e"
SECONDS_PER_CHAR = 0.05


@dataclass
class CartesiaDouble:
    api_key: str = API_KEY
    fail_upgrade_with: int | None = None  # refuse connections with this status
    stall: bool = False  # take transcripts and never answer them (no chunk, no done)
    #: answer transcripts with an error message, as Cartesia reports a failed generation
    error: dict[str, object] | None = None
    transcripts: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    requests: list[dict[str, object]] = field(default_factory=list)
    audio_bytes: int = 0
    port: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spoken(self) -> list[str]:
        """What each context (one per reply) would have said, in order."""
        return ["".join(parts).strip() for parts in self.transcripts.values()]

    def app(self) -> web.Application:
        app = web.Application()
        app.add_routes([web.get("/tts/websocket", self._websocket)])
        return app

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("X-API-Key") != self.api_key:
            return web.json_response({"error": "Invalid API key"}, status=401)
        if self.fail_upgrade_with is not None:
            return web.json_response({"error": "injected"}, status=self.fail_upgrade_with)
        if not request.query.get("cartesia_version"):
            return web.json_response({"error": "cartesia_version is required"}, status=400)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            if message.type != WSMsgType.TEXT:
                continue
            generation = json.loads(message.data)
            self.requests.append(generation)
            context = str(generation["context_id"])
            if generation.get("cancel"):
                continue
            transcript = str(generation.get("transcript", ""))
            self.transcripts[context].append(transcript)
            if self.stall:
                continue
            if self.error is not None:
                await ws.send_json({"type": "error", "context_id": context, **self.error})
                continue
            await self._speak(ws, generation, context, transcript)
            if not generation.get("continue", False):
                await ws.send_json(
                    {"type": "done", "done": True, "status_code": 200, "context_id": context}
                )
        return ws

    async def _speak(
        self, ws: web.WebSocketResponse, generation: dict[str, object], context: str, text: str
    ) -> None:
        output = generation["output_format"]
        assert isinstance(output, dict), output
        assert output["encoding"] == "pcm_s16le", output
        samples = int(len(text.strip()) * SECONDS_PER_CHAR * int(output["sample_rate"]))
        if samples == 0:
            return
        pcm = bytes(2 * samples)
        self.audio_bytes += len(pcm)
        await ws.send_json(
            {
                "type": "chunk",
                "data": base64.b64encode(pcm).decode(),
                "done": False,
                "status_code": 206,
                "step_time": 1.0,
                "context_id": context,
            }
        )


@asynccontextmanager
async def running(double: CartesiaDouble) -> AsyncIterator[CartesiaDouble]:
    async with serving_aiohttp(double.app(), double.port) as port:
        double.port = port
        yield double
