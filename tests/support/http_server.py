"""Serve an ASGI app on a free loopback port for the length of an ``async with``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from starlette.types import ASGIApp

from tests.support.nats_server import free_port


@asynccontextmanager
async def serving(app: ASGIApp) -> AsyncIterator[int]:
    """Yields the port once the server accepts connections (readiness, not a sleep)."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:
                await asyncio.sleep(0.01)
        yield port
    finally:
        server.should_exit = True
        await task
