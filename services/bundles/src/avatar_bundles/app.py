"""Composition root: settings, policy and adapters in; the FastAPI application out."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
from fastapi import FastAPI
from opentelemetry import metrics, trace

from avatar_bundles.api import bundle_router
from avatar_bundles.bundles import BundleService
from avatar_bundles.cache import MemoryCache, NegativeCache, SharedCache
from avatar_bundles.config import BundlesSettings
from avatar_bundles.sources import BundleSource, DirectorySource
from avatar_bundles.zeroweight import UpstreamGate, ZeroWeightSource
from avatar_shared import semconv
from avatar_shared.ratelimit import RateLimiter
from avatar_shared.web.auth import Authenticator, AuthSettings, security_requirements
from avatar_shared.web.clientip import ClientAddress
from avatar_shared.web.limits import REMAINING_HEADER, RequestLimits
from avatar_shared.web.policy import Policy
from avatar_shared.web.safety import anonymous_everything, broad_proxies, open_cors, plain_text_url
from avatar_shared.web.service import Cors, build_app

VERSION = "0.1.0"


def unsafe_settings(settings: BundlesSettings, auth: AuthSettings, policy: Policy) -> list[str]:
    """What in this configuration must not reach production (avatar_shared.web.safety)."""
    zeroweight = settings.zeroweight_url if settings.backend == "zeroweight" else None
    return [
        *broad_proxies("BUNDLES_TRUSTED_PROXIES", settings.trusted_proxies),
        *open_cors("BUNDLES_CORS_ORIGINS", settings.cors_origins),
        *plain_text_url("BUNDLES_ZEROWEIGHT_URL", zeroweight),
        *plain_text_url("AUTH_OIDC_JWKS_URL", auth.oidc_jwks_url),
        *anonymous_everything(auth.anonymous, policy),
    ]


def build_source(
    settings: BundlesSettings,
    http: httpx.AsyncClient,
    tracer_provider: trace.TracerProvider | None,
    meter_provider: metrics.MeterProvider | None,
) -> BundleSource:
    if settings.backend == "directory":
        return DirectorySource(Path(settings.directory), settings.max_bundle_bytes)
    assert settings.zeroweight_api_key is not None  # the settings check guarantees it
    meter = metrics.get_meter("avatar_bundles", meter_provider=meter_provider)
    calls = meter.create_counter(
        semconv.METRIC_BUNDLE_UPSTREAM_CALLS, description="ZeroWeight calls by status (or shed)"
    )
    return ZeroWeightSource(
        settings.zeroweight_url,
        settings.zeroweight_api_key.get_secret_value(),
        http,
        timeout=settings.upstream_timeout_seconds,
        deadline=settings.upstream_deadline_seconds,
        retries=settings.upstream_retries,
        max_bytes=settings.max_bundle_bytes,
        concurrency=settings.upstream_concurrency,
        gate=UpstreamGate(
            settings.upstream_reserve,
            max_retry_after=settings.upstream_max_retry_after_seconds,
            max_backoff=settings.upstream_max_backoff_seconds,
        ),
        on_call=lambda status: calls.add(1, {semconv.UPSTREAM_STATUS: status}),
        tracer_provider=tracer_provider,
    )


def create_app(
    settings: BundlesSettings,
    auth: AuthSettings,
    policy: Policy,
    shared: SharedCache | None,
    *,
    http: httpx.AsyncClient | None = None,
    clock: Callable[[], float] = time.time,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
) -> FastAPI:
    http = http or httpx.AsyncClient()
    service = BundleService(
        build_source(settings, http, tracer_provider, meter_provider),
        MemoryCache(settings.memory_cache_entries, settings.memory_cache_bytes),
        shared,
        ttl_seconds=settings.cache_ttl_seconds,
        stale_seconds=settings.stale_seconds,
        unknown=NegativeCache(settings.negative_ttl_seconds, clock=clock),
        clock=clock,
        meter_provider=meter_provider,
    )
    router = bundle_router(
        service,
        Authenticator.from_settings(auth, policy, http, browser_origins=settings.cors_origins),
        policy,
        RequestLimits(
            RateLimiter(settings.rate_per_ip),
            RateLimiter(settings.rate_per_principal),
            what="bundle requests",
        ),
        ClientAddress(settings.trusted_proxies),
        settings.browser_max_age_seconds,
    )
    return build_app(
        title="avatar-backend bundle service",
        description="Avatar runtime bundles, from ZeroWeight or a folder, cached.",
        version=VERSION,
        routers=[router],
        http=http,
        cors=Cors(
            origins=settings.cors_origins,
            methods=["GET"],
            headers=["Authorization", "X-API-Key", "If-None-Match"],
            expose=["ETag", REMAINING_HEADER, "Retry-After"],
        ),
        security=security_requirements(auth, policy),
        docs=settings.api_docs,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
    )
