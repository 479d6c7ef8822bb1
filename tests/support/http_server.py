"""Serve an app on a loopback port for the length of an ``async with``: an ASGI app
(:func:`serving`, uvicorn) or an aiohttp one (:func:`serving_aiohttp`), for the doubles."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from aiohttp import web
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


@asynccontextmanager
async def serving_aiohttp(app: web.Application, port: int = 0) -> AsyncIterator[int]:
    """Serves ``app`` on ``port``, or on one the system picks (0); yields the port."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()
