"""A ZeroWeight API double on a real loopback HTTP port.

Speaks the public API as documented: ``GET /api/v1/avatars/bundle/{avatar_id}`` with the
``X-ZW-Api-Key`` header -> ``200 {"payload": ...}``; 401 without the right key; 404 for
unknown avatars, 403 for others' private ones; ``X-RateLimit-Remaining`` on every answer
and 429 with ``Retry-After`` past ``limit`` requests a minute per client IP. Tests can
make it slow or failing and read how often it was called.

``fault`` makes every bundle answer broken in one way (:data:`FAULTS`), as a faulty
upstream or a hostile one would send it.
"""

from __future__ import annotations

import asyncio
import gzip
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.support.http_server import serving

API_KEY = "zw-test-key-7f3a9c"
MIB = 1024 * 1024

#: Ways a bundle answer can be broken.
FAULTS = (
    "gzip_bomb",  # 200 KiB of gzip inflating to 200 MiB
    "oversized",  # a 40 MiB payload, plainly
    "drip",  # a 30-byte bundle, one byte a second
    "truncated",  # Content-Length promises more than is sent
    "invalid_gzip",  # Content-Encoding: gzip over bytes that are not
    "deep_nesting",  # JSON nested 100,000 deep
    "not_json",  # an HTML error page with status 200
)


def _gzip_bomb() -> bytes:
    return gzip.compress(b'{"payload": "' + b"A" * (200 * MIB) + b'"}', compresslevel=9)


@dataclass
class ZeroWeightDouble:
    bundles: dict[str, str] = field(default_factory=lambda: {"ava-1": "payload-of-ava-1"})
    private: set[str] = field(default_factory=set)
    limit: int = 200
    delay: float = 0.0
    fail_with: list[int] = field(default_factory=list)  # statuses for the next calls
    retry_after: str = "30"  # Retry-After of its 429s
    fault: str | None = None
    calls: list[str] = field(default_factory=list)
    keys_seen: list[str | None] = field(default_factory=list)
    _window: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    _bomb: bytes = b""
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _bundle(self, request: Request) -> Response:
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
        # what this call answers is decided as it arrives: a delayed call that wakes up
        # later (its client long gone) must not take a failure meant for a later call
        injected = self.fail_with.pop(0) if self.fail_with else None
        fault = self.fault
        if self.delay:
            await asyncio.sleep(self.delay)
        if len(window) > self.limit:
            return JSONResponse(
                {"detail": "Too Many Requests"},
                429,
                headers=headers | {"Retry-After": self.retry_after},
            )
        if request.headers.get("x-zw-api-key") != API_KEY:
            return JSONResponse({"detail": "Invalid API key"}, 401, headers=headers)
        if injected is not None:
            extra = {"Retry-After": self.retry_after} if injected in (429, 503) else {}
            return JSONResponse({"detail": "upstream trouble"}, injected, headers=headers | extra)
        if fault is not None:
            return self._faulty(fault, headers)
        if avatar_id in self.private:
            return JSONResponse({"detail": "Forbidden"}, 403, headers=headers)
        if avatar_id not in self.bundles:
            return JSONResponse({"detail": "Avatar not found"}, 404, headers=headers)
        return JSONResponse({"payload": self.bundles[avatar_id]}, headers=headers)

    def _faulty(self, fault: str, headers: dict[str, str]) -> Response:
        if fault == "gzip_bomb":
            self._bomb = self._bomb or _gzip_bomb()
            gz = headers | {"Content-Encoding": "gzip"}
            return Response(self._bomb, media_type="application/json", headers=gz)
        if fault == "oversized":
            return JSONResponse({"payload": "A" * (40 * MIB)}, headers=headers)
        if fault == "drip":
            return StreamingResponse(_drip(b'{"payload": "dripping-bundle"}'), headers=headers)
        if fault == "truncated":
            cut = headers | {"Content-Length": "1000"}
            return Response(b'{"payload": "cut', media_type="application/json", headers=cut)
        if fault == "invalid_gzip":
            gz = headers | {"Content-Encoding": "gzip"}
            return Response(b"not gzip at all" * 10, media_type="application/json", headers=gz)
        if fault == "deep_nesting":
            return Response(b"[" * 100_000, media_type="application/json", headers=headers)
        if fault == "not_json":
            return Response(b"<html>Bad Gateway</html>", media_type="text/html", headers=headers)
        raise ValueError(f"unknown fault {fault!r}")

    async def _stats(self, request: Request) -> JSONResponse:
        return JSONResponse({"calls": len(self.calls)})

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/api/v1/avatars/bundle/{avatar_id}", self._bundle),
                Route("/_double/stats", self._stats),  # the double's own, not ZeroWeight's
            ]
        )


async def _drip(body: bytes) -> AsyncIterator[bytes]:
    for byte in body:
        yield bytes([byte])
        await asyncio.sleep(1.0)


@asynccontextmanager
async def running(double: ZeroWeightDouble) -> AsyncIterator[ZeroWeightDouble]:
    async with serving(double.app()) as port:
        double.port = port
        yield double


if __name__ == "__main__":  # for benchmarks: python -m tests.support.zeroweight PORT
    import sys

    double = ZeroWeightDouble(bundles={"hot-avatar": "x" * 100_000}, limit=10**9)
    uvicorn.run(double.app(), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
