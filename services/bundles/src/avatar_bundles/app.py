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
from avatar_bundles.cache import MemoryCache, SharedCache
from avatar_bundles.config import BundlesSettings
from avatar_bundles.sources import BundleSource, DirectorySource, RateGate, ZeroWeightSource
from avatar_shared import semconv
from avatar_shared.web.auth import Authenticator, AuthSettings
from avatar_shared.web.policy import Policy
from avatar_shared.web.service import Cors, build_app

VERSION = "0.1.0"


def build_source(
    settings: BundlesSettings,
    http: httpx.AsyncClient,
    tracer_provider: trace.TracerProvider | None,
    meter_provider: metrics.MeterProvider | None,
) -> BundleSource:
    if settings.backend == "directory":
        return DirectorySource(Path(settings.directory))
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
        retries=settings.upstream_retries,
        gate=RateGate(settings.upstream_reserve),
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
        MemoryCache(settings.memory_cache_entries),
        shared,
        ttl_seconds=settings.cache_ttl_seconds,
        stale_seconds=settings.stale_seconds,
        clock=clock,
        meter_provider=meter_provider,
    )
    router = bundle_router(
        service,
        Authenticator.from_settings(auth, policy, http),
        policy,
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
            expose=["ETag"],
        ),
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
    )
