"""Settings of the bundle service (``BUNDLES_*``).

Memory is bounded by design (docs/bundles.md, "Memory"): at most
``memory_cache_bytes`` of cached bundles, plus ``upstream_concurrency`` loads in flight,
each holding a few copies of at most ``max_bundle_bytes``. The defaults fit the
manifests' 256 MiB limit with room for the interpreter and its libraries.
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from avatar_shared.config import Secret
from avatar_shared.ratelimit import Rate
from avatar_shared.web.service import HttpServiceSettings

MIB = 1024 * 1024


class BundlesSettings(HttpServiceSettings):
    model_config = SettingsConfigDict(env_prefix="BUNDLES_", extra="ignore")

    host: str = Field("0.0.0.0", description="Address the bundle service listens on")  # noqa: S104
    port: int = Field(8200, gt=0, lt=65536, description="Port of the bundle service")
    metrics_port: int = Field(
        8201, gt=0, lt=65536, description="Port of /metrics (Prometheus), apart from the API"
    )
    backend: Literal["directory", "zeroweight"] = Field(
        "directory", description="Where bundles come from: directory or zeroweight"
    )
    directory: str = Field(
        "services/bundles/samples", description="Folder of <avatar_id>.json bundles (directory)"
    )
    zeroweight_url: str = Field(
        "https://api.zeroweight.ai", description="ZeroWeight API base URL (zeroweight)"
    )
    zeroweight_api_key: Secret | None = Field(
        None, description="ZeroWeight API key, server-side only (required for zeroweight)"
    )
    max_bundle_bytes: int = Field(
        4 * MIB, ge=1024, description="Largest bundle accepted (decoded bytes); larger is a 502"
    )
    cache_ttl_seconds: float = Field(300, gt=0, description="How long a cached bundle is fresh")
    stale_seconds: float = Field(
        3600, ge=0, description="How long past freshness a bundle may be served if upstream fails"
    )
    negative_ttl_seconds: float = Field(
        30, ge=0, description="How long an unknown avatar (404) is remembered, sparing upstream"
    )
    memory_cache_entries: int = Field(256, ge=1, description="Bundles kept in process memory")
    memory_cache_bytes: int = Field(
        64 * MIB, ge=MIB, description="Bytes of bundles kept in process memory, at most"
    )
    shared_cache_timeout_seconds: float = Field(
        1.0, gt=0, description="Per shared-cache (JetStream object store) read or write"
    )
    shared_cache_max_bytes: int = Field(
        1024 * MIB, ge=MIB, description="Size of the shared cache bucket; writes fail past it"
    )
    upstream_timeout_seconds: float = Field(5.0, gt=0, description="Per ZeroWeight attempt")
    upstream_deadline_seconds: float = Field(
        10.0, gt=0, description="Per bundle request, every attempt and wait included"
    )
    upstream_retries: int = Field(2, ge=0, le=5, description="Retries on 5xx and timeouts")
    upstream_concurrency: int = Field(
        4, ge=1, description="ZeroWeight calls in flight at once (each holds one bundle)"
    )
    upstream_reserve: int = Field(
        5, ge=0, description="Stop calling ZeroWeight when X-RateLimit-Remaining falls to this"
    )
    upstream_max_retry_after_seconds: float = Field(
        300, gt=0, description="Longest Retry-After from ZeroWeight that is honoured"
    )
    upstream_max_backoff_seconds: float = Field(
        60, gt=0, description="Longest pause in calls after ZeroWeight failed, doubling from 1 s"
    )
    browser_max_age_seconds: int = Field(60, ge=0, description="Cache-Control max-age for browsers")
    rate_per_ip: Rate = Field("120/minute", description="Bundle requests allowed per client IP")
    rate_per_principal: Rate = Field("60/minute", description="Bundle requests allowed per caller")

    @model_validator(mode="after")
    def _key_for_zeroweight(self) -> Self:
        if self.backend == "zeroweight" and self.zeroweight_api_key is None:
            raise ValueError(
                "BUNDLES_ZEROWEIGHT_API_KEY is required when BUNDLES_BACKEND=zeroweight"
            )
        return self

    @model_validator(mode="after")
    def _a_bundle_fits_the_memory_cache(self) -> Self:
        if self.max_bundle_bytes > self.memory_cache_bytes:
            raise ValueError("BUNDLES_MAX_BUNDLE_BYTES must not exceed BUNDLES_MEMORY_CACHE_BYTES")
        return self
