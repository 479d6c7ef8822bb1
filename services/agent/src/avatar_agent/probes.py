"""The agent's own probes, on ``AGENT_PROBE_PORT`` (8401), in both run modes.

- ``GET /healthz``: the process serves requests (liveness).
- ``GET /readyz``: the agent can do its work: the avatars file is loaded (a mistake in it
  stops the process at start), NATS answers, and, as a LiveKit worker, the worker has
  registered with LiveKit. 503 with the reasons otherwise.

livekit-agents' worker serves ``GET /`` on ``AGENT_PORT`` itself (its connection to
LiveKit); it has no hook for more routes, so these have their own port.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from aiohttp import web

from avatar_agent.runtime import LazyBus

log = logging.getLogger(__name__)

Check = Callable[[], str | None]  # None when fine, else why not


class Probes:
    def __init__(self, bus: LazyBus, *checks: Check) -> None:
        self._bus = bus
        self._checks = [self._nats, *checks]
        self._runner: web.AppRunner | None = None

    def _nats(self) -> str | None:
        if self._bus.connected:
            return None
        self._bus.connect_in_background()  # again, if the last attempt failed
        return "NATS is not connected"

    async def start(self, host: str, port: int) -> None:
        self._bus.connect_in_background()
        app = web.Application()
        app.add_routes([web.get("/healthz", self._healthz), web.get("/readyz", self._readyz)])
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _: web.Request) -> web.Response:
        reasons = [reason for check in self._checks if (reason := check())]
        if reasons:
            return web.Response(
                status=503,
                text=json.dumps({"status": "not_ready", "reasons": reasons}),
                content_type="application/json",
            )
        return web.json_response({"status": "ready"})
