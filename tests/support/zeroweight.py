"""A ZeroWeight API double on a real loopback HTTP port.

Speaks the public API as documented: ``GET /api/v1/avatars/bundle/{avatar_id}`` with the
``X-ZW-Api-Key`` header -> ``200 {"payload": ...}``; 401 without the right key; 404 for
unknown avatars, 403 for others' private ones; ``X-RateLimit-Remaining`` on every answer
and 429 with ``Retry-After`` past ``limit`` requests a minute per client IP. Tests can
make it slow or failing and read how often it was called.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.support.http_server import serving

API_KEY = "zw-test-key-7f3a9c"


@dataclass
class ZeroWeightDouble:
    bundles: dict[str, str] = field(default_factory=lambda: {"ava-1": "payload-of-ava-1"})
    private: set[str] = field(default_factory=set)
    limit: int = 200
    delay: float = 0.0
    fail_with: list[int] = field(default_factory=list)  # statuses for the next calls
    calls: list[str] = field(default_factory=list)
    keys_seen: list[str | None] = field(default_factory=list)
    _window: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _bundle(self, request: Request) -> JSONResponse:
        avatar_id = request.path_params["avatar_id"]
        self.calls.append(avatar_id)
        self.keys_seen.append(request.headers.get("x-zw-api-key"))
        client = request.client.host if request.client else "?"
        now = time.monotonic()
        window = [t for t in self._window[client] if now - t < 60]
        window.append(now)
        self._window[client] = window
        remaining = max(0, self.limit - len(window))
        headers = {"X-RateLimit-Remaining": str(remaining)}
        if self.delay:
            await asyncio.sleep(self.delay)
        if len(window) > self.limit:
            return JSONResponse(
                {"detail": "Too Many Requests"}, 429, headers=headers | {"Retry-After": "30"}
            )
        if request.headers.get("x-zw-api-key") != API_KEY:
            return JSONResponse({"detail": "Invalid API key"}, 401, headers=headers)
        if self.fail_with:
            return JSONResponse(
                {"detail": "upstream trouble"}, self.fail_with.pop(0), headers=headers
            )
        if avatar_id in self.private:
            return JSONResponse({"detail": "Forbidden"}, 403, headers=headers)
        if avatar_id not in self.bundles:
            return JSONResponse({"detail": "Avatar not found"}, 404, headers=headers)
        return JSONResponse({"payload": self.bundles[avatar_id]}, headers=headers)

    async def _stats(self, request: Request) -> JSONResponse:
        return JSONResponse({"calls": len(self.calls)})

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/api/v1/avatars/bundle/{avatar_id}", self._bundle),
                Route("/_double/stats", self._stats),  # the double's own, not ZeroWeight's
            ]
        )


@asynccontextmanager
async def running(double: ZeroWeightDouble) -> AsyncIterator[ZeroWeightDouble]:
    async with serving(double.app()) as port:
        double.port = port
        yield double


if __name__ == "__main__":  # for benchmarks: python -m tests.support.zeroweight PORT
    import sys

    double = ZeroWeightDouble(bundles={"hot-avatar": "x" * 100_000}, limit=10**9)
    uvicorn.run(double.app(), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
