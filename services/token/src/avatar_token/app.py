"""Composition root: settings, policy and adapters in; the FastAPI application out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from opentelemetry import metrics, trace

from avatar_shared.config import LiveKitSettings
from avatar_shared.web.auth import Authenticator, AuthSettings
from avatar_shared.web.clientip import ClientAddress
from avatar_shared.web.errors import install_error_handlers
from avatar_shared.web.policy import Policy
from avatar_shared.web.ratelimit import RateLimiter
from avatar_shared.web.service import ops_router
from avatar_shared.web.tracing import NO_FASTAPI_TELEMETRY, ServerTelemetry
from avatar_token.api import token_router
from avatar_token.config import TokenSettings
from avatar_token.issuer import TokenIssuer
from avatar_token.minting import Minter

VERSION = "0.1.0"


def create_app(
    settings: TokenSettings,
    livekit: LiveKitSettings,
    auth: AuthSettings,
    policy: Policy,
    *,
    http: httpx.AsyncClient | None = None,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
) -> FastAPI:
    http = http or httpx.AsyncClient()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await http.aclose()

    issuer = TokenIssuer(
        policy,
        Authenticator.from_settings(auth, policy, http),
        Minter(livekit.api_key, livekit.api_secret.get_secret_value()),
        per_ip=RateLimiter(settings.rate_per_ip),
        per_principal=RateLimiter(settings.rate_per_principal),
        meter_provider=meter_provider,
    )
    app = FastAPI(
        title="avatar-backend token service",
        version=VERSION,
        description="LiveKit join tokens for avatar sessions, after authentication and policy.",
        lifespan=lifespan,
        telemetry=NO_FASTAPI_TELEMETRY,
    )
    install_error_handlers(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-API-Key"],
            expose_headers=["X-RateLimit-Remaining", "Retry-After"],
        )
    app.include_router(ops_router())
    app.include_router(
        token_router(
            issuer,
            ClientAddress(settings.trusted_proxies),
            settings.public_livekit_url or livekit.url,
        )
    )
    app.add_middleware(
        ServerTelemetry, tracer_provider=tracer_provider, meter_provider=meter_provider
    )
    return app
