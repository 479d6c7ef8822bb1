"""Health, readiness and metrics routes, and serving an ASGI app with a graceful stop.

``/healthz`` answers while the process lives; ``/readyz`` answers 200 unless ``check``
names a reason not to take traffic; ``/metrics`` is the Prometheus exposition of the
OpenTelemetry metrics. On SIGTERM uvicorn stops accepting connections and lets in-flight
requests finish (bounded); Kubernetes' preStop hook covers endpoint propagation.
"""

from __future__ import annotations

import signal
from collections.abc import Callable

import uvicorn
from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp


def ops_router(check: Callable[[], str | None] = lambda: None) -> APIRouter:
    """``check`` returns why the service should not get traffic now, or None."""
    router = APIRouter(include_in_schema=False)

    @router.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @router.get("/readyz")
    async def readyz() -> JSONResponse:
        reason = check()
        if reason:
            return JSONResponse({"status": "unavailable", "reason": reason}, status_code=503)
        return JSONResponse({"status": "ready"})

    @router.get("/metrics")
    async def metrics() -> Response:
        return PlainTextResponse(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return router


async def serve(app: ASGIApp, *, host: str, port: int, graceful_timeout: float) -> None:
    """Serve until SIGTERM or SIGINT, then drain; returns normally so the caller can flush."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=int(graceful_timeout),
    )
    # uvicorn handles the signal, then re-raises it to the handler that was installed
    # before it started; a no-op handler there turns that into a normal return.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    await uvicorn.Server(config).serve()
