"""The skeleton every HTTP service shares, and serving it with a graceful stop.

:func:`build_app` assembles a FastAPI app the same way for each service: JSON errors
(:mod:`avatar_shared.web.errors`, :class:`~avatar_shared.web.guard.ResponseGuard`),
optional CORS, the probes, lean server telemetry, the callers' credentials declared in
the OpenAPI document, and the service's HTTP client closed at shutdown. The interactive
``/docs`` page loads its scripts from a CDN, so it exists only when asked for.

``/healthz`` answers while the process lives; ``/readyz`` answers 200 unless ``ready``
names a reason not to take traffic. Metrics are not on the API's port: :func:`serve`
exposes them on a port of their own (``metrics_port``), for Prometheus only, unless the
app is itself internal and asks for the ``/metrics`` route. That port is served in the
event loop with the same bounds as the API's (header deadline, at most
:data:`METRICS_CONNECTIONS` connections), not by a thread per connection.

:func:`serve` bounds what a client can hold: request headers must arrive within
``header_timeout`` seconds, an answer the client stops reading is cut off after
``send_timeout`` seconds, at most ``max_connections`` are served at once (``503
overloaded`` past it, :mod:`avatar_shared.web.h11`), and no ``server`` header
advertises the stack. On SIGTERM uvicorn
stops accepting connections and lets in-flight requests finish (bounded); Kubernetes'
preStop hook covers endpoint propagation.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import prometheus_client
import uvicorn
from fastapi import APIRouter, FastAPI, Response
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse
from opentelemetry import metrics, trace
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings
from starlette.types import ASGIApp

from avatar_shared.logs import Repeats
from avatar_shared.web.cors import JsonCors
from avatar_shared.web.errors import install_error_handlers
from avatar_shared.web.guard import ResponseGuard
from avatar_shared.web.h11 import bounded_h11
from avatar_shared.web.tracing import NO_FASTAPI_TELEMETRY, ServerTelemetry

log = logging.getLogger(__name__)
#: uvicorn's warnings, a client's to provoke: each at most once a minute.
_SERVER_WARNINGS = Repeats()
#: Connections the metrics port serves at once: Prometheus scrapes one at a time, and
#: a replica is rarely scraped by more than a couple.
METRICS_CONNECTIONS = 8


@dataclass(frozen=True)
class Cors:
    """Which browser origins may call, and what they may send and read."""

    origins: Sequence[str]
    methods: Sequence[str]
    headers: Sequence[str]
    expose: Sequence[str] = ()


@dataclass(frozen=True)
class ServerLimits:
    header_timeout: float = 10.0
    max_connections: int = 1000
    send_timeout: float = 30.0


class HttpServiceSettings(BaseSettings):
    """What the token and bundle services' settings share: browsers, proxies, slow and
    many clients, draining. Each subclass sets its prefix, address, ports and rates
    (``rate_per_ip``, ``rate_per_principal``: :data:`avatar_shared.ratelimit.Rate`)."""

    cors_origins: list[str] = Field(
        [],
        description='Origins allowed to call from a browser, JSON list, e.g. ["https://app.example"]',
    )
    trusted_proxies: list[str] = Field(
        [], description="CIDRs of proxies whose X-Forwarded-For is believed, JSON list"
    )
    graceful_timeout_seconds: float = Field(
        20.0, gt=0, description="Seconds in-flight requests get to finish on SIGTERM"
    )
    header_timeout_seconds: float = Field(
        10.0, gt=0, description="A client must send a request's headers within this"
    )
    max_connections: int = Field(
        1000, ge=1, description="Connections served at once; more are answered 503"
    )
    send_timeout_seconds: float = Field(
        30.0, gt=0, description="A client that takes none of an answer for this is cut off"
    )
    api_docs: bool = Field(False, description="Serve the interactive /docs page (loads a CDN)")

    @property
    def limits(self) -> ServerLimits:
        return ServerLimits(
            self.header_timeout_seconds, self.max_connections, self.send_timeout_seconds
        )


#: OpenAPI security schemes of the HTTP services (docs/policy.md, "Callers").
SECURITY_SCHEMES: dict[str, dict[str, str]] = {
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
}


def build_app(
    *,
    title: str,
    description: str,
    version: str,
    routers: Sequence[APIRouter],
    http: httpx.AsyncClient,
    cors: Cors,
    ready: Callable[[], str | None] = lambda: None,
    security: Sequence[dict[str, list[str]]] = (),
    schemas: Sequence[type[BaseModel]] = (),
    docs: bool = False,
    metrics_route: bool = False,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
) -> FastAPI:
    """``security``: the OpenAPI security requirements of every route (``{}`` when
    anonymous callers are let in); ``schemas``: models that routes validate themselves
    and reference as ``#/components/schemas/<name>``."""

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
        docs_url="/docs" if docs else None,
        redoc_url=None,
        # Starlette would redirect `/path/` to `/path`, building the Location from the
        # client's Host header; an API answers 404 instead.
        redirect_slashes=False,
    )
    install_error_handlers(app)
    app.add_middleware(ResponseGuard)
    if cors.origins:
        app.add_middleware(
            JsonCors,
            allow_origins=list(cors.origins),
            allow_methods=list(cors.methods),
            allow_headers=list(cors.headers),
            expose_headers=list(cors.expose),
        )
    app.include_router(ops_router(ready, metrics_route=metrics_route))
    for router in routers:
        app.include_router(router)
    app.add_middleware(
        ServerTelemetry, tracer_provider=tracer_provider, meter_provider=meter_provider
    )
    if security or schemas:
        _extend_openapi(app, list(security), schemas)
    return app


def _extend_openapi(
    app: FastAPI, security: list[dict[str, list[str]]], schemas: Sequence[type[BaseModel]]
) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            components = document.setdefault("components", {})
            defined = components.setdefault("schemas", {})
            for model in schemas:
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                defined.update(schema.pop("$defs", {}))
                defined[model.__name__] = schema
            if security:
                used = {name for requirement in security for name in requirement}
                components["securitySchemes"] = {
                    name: scheme for name, scheme in SECURITY_SCHEMES.items() if name in used
                }
                document["security"] = security
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def ops_router(
    check: Callable[[], str | None] = lambda: None, *, metrics_route: bool = False
) -> APIRouter:
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

    if metrics_route:

        @router.get("/metrics")
        async def metrics() -> Response:
            return PlainTextResponse(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return router


async def serve(
    app: ASGIApp,
    *,
    host: str,
    port: int,
    graceful_timeout: float,
    limits: ServerLimits = ServerLimits(),
    metrics_port: int | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT, then drain; returns normally so the caller can flush.

    With ``metrics_port``, the Prometheus exposition is served there, on the same host.
    """

    def bounded(served: ASGIApp, on_port: int, **options: Any) -> uvicorn.Config:
        """A server as every one of ours is: bounded clients, no logs or header of its own."""
        return uvicorn.Config(
            served,
            host=host,
            port=on_port,
            http=bounded_h11(limits.header_timeout, limits.send_timeout),
            log_config=None,
            access_log=False,
            server_header=False,
            **options,
        )

    server_log = logging.getLogger("uvicorn.error")  # a line per malformed request
    if _SERVER_WARNINGS not in server_log.filters:
        server_log.addFilter(_SERVER_WARNINGS)
    config = bounded(
        app,
        port,
        lifespan="on",
        limit_concurrency=limits.max_connections,
        timeout_graceful_shutdown=int(graceful_timeout),
    )
    scraping: asyncio.Task[None] | None = None
    if metrics_port is not None:
        exposition = prometheus_client.make_asgi_app()
        metrics_config = bounded(
            exposition, metrics_port, lifespan="off", limit_concurrency=METRICS_CONNECTIONS
        )
        scraper = uvicorn.Server(metrics_config)
        # Bound now, so that a port in use stops the start (as the API's would).
        sockets = [scraper.config.bind_socket()]
        scraping = asyncio.create_task(scraper.serve(sockets), name="metrics server")
        log.info("metrics on port %d", metrics_port)
    # uvicorn handles the signal, then re-raises it to the handler that was installed
    # before it started; a no-op handler there turns that into a normal return. (The
    # metrics server, which starts after the API's, hands it on to the API's that way.)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    # Everything built so far (the app, its routes, models, settings) lives as long as
    # the process: keep it out of the garbage collector's full scans, which otherwise
    # walk it again and again under load.
    gc.collect()
    gc.freeze()
    try:
        await uvicorn.Server(config).serve()
    finally:
        if scraping is not None:
            scraper.should_exit = True
            await scraping
