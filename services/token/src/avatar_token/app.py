"""Composition root: settings, policy and adapters in; the FastAPI application out."""

from __future__ import annotations

import httpx
from fastapi import FastAPI
from opentelemetry import metrics, trace

from avatar_shared.audit import AuditSettings, AuditTrail
from avatar_shared.config import LiveKitSettings
from avatar_shared.ratelimit import RateLimiter
from avatar_shared.web.auth import Authenticator, AuthSettings, security_requirements
from avatar_shared.web.clientip import ClientAddress
from avatar_shared.web.limits import REMAINING_HEADER, RequestLimits
from avatar_shared.web.policy import Policy
from avatar_shared.web.safety import (
    anonymous_everything,
    broad_proxies,
    open_cors,
    plain_text_url,
    weak_secret,
)
from avatar_shared.web.service import Cors, build_app
from avatar_token.api import token_router
from avatar_token.config import TokenSettings
from avatar_token.issuer import Admission, TokenIssuer
from avatar_token.minting import Minter
from avatar_token.protocol import StandardTokenRequest

VERSION = "0.1.0"


def unsafe_settings(
    settings: TokenSettings, livekit: LiveKitSettings, auth: AuthSettings, policy: Policy
) -> list[str]:
    """What in this configuration must not reach production (avatar_shared.web.safety)."""
    return [
        *weak_secret("LIVEKIT_API_SECRET", livekit.api_secret.get_secret_value()),
        *broad_proxies("TOKEN_TRUSTED_PROXIES", settings.trusted_proxies),
        *open_cors("TOKEN_CORS_ORIGINS", settings.cors_origins),
        *plain_text_url(
            "TOKEN_PUBLIC_LIVEKIT_URL" if settings.public_livekit_url else "LIVEKIT_URL",
            settings.public_livekit_url or livekit.url,
        ),
        *plain_text_url("AUTH_OIDC_JWKS_URL", auth.oidc_jwks_url),
        *anonymous_everything(auth.anonymous, policy),
    ]


def create_app(
    settings: TokenSettings,
    livekit: LiveKitSettings,
    auth: AuthSettings,
    policy: Policy,
    *,
    http: httpx.AsyncClient | None = None,
    admission: Admission | None = None,
    audit: AuditTrail | None = None,
    audit_settings: AuditSettings | None = None,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
) -> FastAPI:
    http = http or httpx.AsyncClient()
    issuer = TokenIssuer(
        policy,
        Authenticator.from_settings(auth, policy, http, browser_origins=settings.cors_origins),
        Minter(livekit.api_key, livekit.api_secret.get_secret_value()),
        RequestLimits(
            RateLimiter(settings.rate_per_ip),
            RateLimiter(settings.rate_per_principal),
            what="token requests",
        ),
        start_window=settings.session_start_seconds,
        admission=admission,
        audit=audit,
        audit_settings=audit_settings,
        meter_provider=meter_provider,
    )
    router = token_router(
        issuer,
        ClientAddress(settings.trusted_proxies),
        settings.public_livekit_url or livekit.url,
        settings.body_timeout_seconds,
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
            expose=[REMAINING_HEADER, "Retry-After"],
        ),
        security=security_requirements(auth, policy),
        schemas=[StandardTokenRequest],
        docs=settings.api_docs,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
    )
