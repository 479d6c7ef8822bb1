"""Composition root: settings, policy and adapters in; the FastAPI application out."""

from __future__ import annotations

import httpx
from fastapi import FastAPI
from opentelemetry import metrics, trace

from avatar_shared.config import LiveKitSettings
from avatar_shared.web.auth import Authenticator, AuthSettings
from avatar_shared.web.clientip import ClientAddress
from avatar_shared.web.policy import Policy
from avatar_shared.web.ratelimit import RateLimiter
from avatar_shared.web.service import Cors, build_app
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
    issuer = TokenIssuer(
        policy,
        Authenticator.from_settings(auth, policy, http),
        Minter(livekit.api_key, livekit.api_secret.get_secret_value()),
        per_ip=RateLimiter(settings.rate_per_ip),
        per_principal=RateLimiter(settings.rate_per_principal),
        meter_provider=meter_provider,
    )
    router = token_router(
        issuer,
        ClientAddress(settings.trusted_proxies),
        settings.public_livekit_url or livekit.url,
    )
    return build_app(
        title="avatar-backend token service",
        description="LiveKit join tokens for avatar sessions, after authentication and policy.",
        version=VERSION,
        routers=[router],
        http=http,
        cors=Cors(
            origins=settings.cors_origins,
            methods=["GET", "POST"],
            headers=["Authorization", "Content-Type", "X-API-Key"],
            expose=["X-RateLimit-Remaining", "Retry-After"],
        ),
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
    )
