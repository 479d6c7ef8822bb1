"""A local OpenAI-compatible chat server double (what vLLM, Ollama and LM Studio serve).

Speaks the wire protocol the OpenAI SDK uses: ``POST /v1/chat/completions`` with
``"stream": true`` answers Server-Sent Events, one ``chat.completion.chunk`` per piece of
text, a last chunk with ``finish_reason``, a usage chunk when ``stream_options`` asks for
it, then ``data: [DONE]``; ``GET /v1/models`` lists the model it serves, and a request
for any other model is a 404 ``model_not_found``, as a real server answers.

Error modes, for the next calls or for every call: HTTP statuses (429 and 503 with
``Retry-After``), a stream cut after some chunks (the connection dropped without the
terminating chunk), a stream that stalls after some chunks, one that sends only SSE
comments after some chunks (bytes without words), and a stream that ends early
after some chunks: with an ``{"error": ...}`` event as OpenAI streams one, with a line
that is not JSON, or with a ``finish_reason`` (``length``, ``content_filter``, ``stop``).
And a server that ignores ``max_completion_tokens``: its reply goes on for ever, as a
local model caught repeating itself does (``endless``). Every call is recorded with its
arrival time, and when the client hung up on it (``Call.hung_up``).

Also a process for ``make run``: ``python -m tests.support.openai_compatible --port 18080
--model local-model`` (docs/agent.md, "Bring your own model").
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support.http_server import serving_aiohttp

MODEL = "local-model"
REPLIES = (
    '<emotion value="happy"/> Hello from your own model! [action:wave_hand] I stream my '
    "words in small pieces, as a real server does.",
    "[action: nod] Tags split across chunks are still removed before anyone hears them.",
)
CHUNK = 6  # characters per streamed chunk


@dataclass
class Call:
    at: float  # time.monotonic() on arrival
    body: dict[str, Any]
    hung_up: float | None = None  # time.monotonic() when the client closed the stream


@dataclass
class OpenAICompatibleDouble:
    model: str = MODEL
    replies: tuple[str, ...] = REPLIES
    api_key: str | None = None  # None: any key, as local servers accept
    fail_with: list[int] = field(default_factory=list)  # statuses for the next calls
    retry_after: str | None = "1"  # Retry-After of 429 and 503 answers
    cut_after: int | None = None  # drop the connection after this many chunks
    stall_after: int | None = None  # stop sending (and hold the call) after this many
    #: after this many chunks, only an SSE comment (``: keep-alive``) every ``chunk_delay``
    #: for ever: bytes keep coming, words never do
    drip_after: int | None = None
    #: after this many chunks, instead of the next one: an ``error`` event as OpenAI streams
    #: one, a line that is not JSON, or the end (``finish_reason`` ``finish``, then [DONE])
    broken_after: int | None = None
    broken_with: str = "error"  # "error", "garbage" or a finish_reason ("length", ...)
    endless: bool = False  # the reply, again and again, whatever max_completion_tokens says
    chunk_delay: float = 0.01
    calls: list[Call] = field(default_factory=list)
    port: int = 0
    _replies: itertools.cycle[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._replies = itertools.cycle(self.replies)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def completions(self) -> list[Call]:
        return [c for c in self.calls if "messages" in c.body]

    def app(self) -> web.Application:
        app = web.Application()
        app.add_routes(
            [
                web.get("/v1/models", self._models),
                web.post("/v1/chat/completions", self._chat),
            ]
        )
        return app

    async def _models(self, _: web.Request) -> web.Response:
        model = {"id": self.model, "object": "model", "created": 0, "owned_by": "double"}
        return web.json_response({"object": "list", "data": [model]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.calls.append(Call(time.monotonic(), body))
        if self.api_key and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _error(401, "Incorrect API key provided", "invalid_api_key")
        if self.fail_with:
            status = self.fail_with.pop(0)
            headers = {"Retry-After": self.retry_after} if self.retry_after else {}
            return _error(status, "injected failure", "server_error", headers)
        if body.get("model") != self.model:
            message = f"The model `{body.get('model')}` does not exist."
            return _error(404, message, "model_not_found")
        if not body.get("stream"):
            return _error(400, "this double only streams", "invalid_request_error")
        call = self.calls[-1]
        try:
            return await self._stream(request, body, next(self._replies))
        except (ConnectionResetError, asyncio.CancelledError):
            call.hung_up = time.monotonic()
            raise

    async def _stream(
        self, request: web.Request, body: dict[str, Any], reply: str
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        ident = f"chatcmpl-{len(self.calls)}"

        async def send(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> None:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            chunk = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": self.model,
                "choices": [choice] if delta or finish else [],
                **extra,
            }
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())

        await send({"role": "assistant", "content": ""})
        pieces = (reply[start : start + CHUNK] for start in range(0, len(reply), CHUNK))
        for sent, piece in enumerate(itertools.cycle(pieces) if self.endless else pieces):
            if sent == self.cut_after:
                assert request.transport is not None
                request.transport.close()  # no terminating chunk: a dropped connection
                return response
            if sent == self.stall_after:
                await asyncio.sleep(3600)
            if sent == self.drip_after:
                for _ in range(round(3600 / self.chunk_delay)):
                    await response.write(b": keep-alive\n\n")
                    await asyncio.sleep(self.chunk_delay)
            if sent == self.broken_after:
                await self._break(response, send)
                return response
            await send({"content": piece})
            await asyncio.sleep(self.chunk_delay)
        await send({}, "stop")
        if body.get("stream_options", {}).get("include_usage"):
            usage = {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20}
            await send({}, None, usage=usage)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _break(self, response: web.StreamResponse, send: Any) -> None:
        if self.broken_with == "error":
            error = {"message": "The server had an error", "type": "server_error", "code": None}
            await response.write(f"data: {json.dumps({'error': error})}\n\n".encode())
        elif self.broken_with == "garbage":
            await response.write(b"data: {not json\n\n")
        else:
            await send({}, self.broken_with)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()


def _error(
    status: int, message: str, code: str, headers: dict[str, str] | None = None
) -> web.Response:
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": code}
    return web.json_response({"error": error}, status=status, headers=headers)


@asynccontextmanager
async def running(double: OpenAICompatibleDouble) -> AsyncIterator[OpenAICompatibleDouble]:
    async with serving_aiohttp(double.app(), double.port) as port:
        double.port = port
        yield double


async def _serve(port: int, model: str) -> None:
    async with running(OpenAICompatibleDouble(model=model, port=port)):
        print(f"OpenAI-compatible double on http://127.0.0.1:{port}/v1 serving {model}")
        await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=18080)
    parser.add_argument("--model", default=MODEL)
    args = parser.parse_args()
    with suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.port, args.model))


if __name__ == "__main__":
    main()
