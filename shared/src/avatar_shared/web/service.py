"""The skeleton every HTTP service shares, and serving it with a graceful stop.

:func:`build_app` assembles a FastAPI app the same way for each service: JSON errors,
optional CORS, the ops routes, lean server telemetry, and the service's HTTP client
closed at shutdown.

``/healthz`` answers while the process lives; ``/readyz`` answers 200 unless ``check``
names a reason not to take traffic; ``/metrics`` is the Prometheus exposition of the
OpenTelemetry metrics. On SIGTERM uvicorn stops accepting connections and lets in-flight
requests finish (bounded); Kubernetes' preStop hook covers endpoint propagation.
"""

from __future__ import annotations

import gc
import signal
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import uvicorn
from fastapi import APIRouter, FastAPI, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, PlainTextResponse
from opentelemetry import metrics, trace
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp

from avatar_shared.web.errors import install_error_handlers
from avatar_shared.web.tracing import NO_FASTAPI_TELEMETRY, ServerTelemetry


@dataclass(frozen=True)
class Cors:
    """Which browser origins may call, and what they may send and read."""

    origins: Sequence[str]
    methods: Sequence[str]
    headers: Sequence[str]
    expose: Sequence[str] = ()


def build_app(
    *,
    title: str,
    description: str,
    version: str,
    routers: Sequence[APIRouter],
    http: httpx.AsyncClient,
    cors: Cors,
    ready: Callable[[], str | None] = lambda: None,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await http.aclose()

    app = FastAPI(
        title=title,
        version=version,
        description=description,
        lifespan=lifespan,
        telemetry=NO_FASTAPI_TELEMETRY,
    )
    install_error_handlers(app)
    if cors.origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors.origins),
            allow_methods=list(cors.methods),
            allow_headers=list(cors.headers),
            expose_headers=list(cors.expose),
        )
    app.include_router(ops_router(ready))
    for router in routers:
        app.include_router(router)
    app.add_middleware(
        ServerTelemetry, tracer_provider=tracer_provider, meter_provider=meter_provider
    )
    return app


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
    # Everything built so far (the app, its routes, models, settings) lives as long as
    # the process: keep it out of the garbage collector's full scans, which otherwise
    # walk it again and again under load.
    gc.collect()
    gc.freeze()
    await uvicorn.Server(config).serve()
