"""Settings of the bundle service (``BUNDLES_*``)."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from avatar_shared.config import Secret


class BundlesSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BUNDLES_", extra="ignore")

    host: str = Field("0.0.0.0", description="Address the bundle service listens on")  # noqa: S104
    port: int = Field(8200, gt=0, lt=65536, description="Port of the bundle service")
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
    cache_ttl_seconds: float = Field(300, gt=0, description="How long a cached bundle is fresh")
    stale_seconds: float = Field(
        3600, ge=0, description="How long past freshness a bundle may be served if upstream fails"
    )
    memory_cache_entries: int = Field(256, ge=1, description="Bundles kept in process memory")
    upstream_timeout_seconds: float = Field(5.0, gt=0, description="Per ZeroWeight request")
    upstream_retries: int = Field(2, ge=0, le=5, description="Retries on 5xx and timeouts")
    upstream_reserve: int = Field(
        5, ge=0, description="Stop calling ZeroWeight when X-RateLimit-Remaining falls to this"
    )
    browser_max_age_seconds: int = Field(60, ge=0, description="Cache-Control max-age for browsers")
    cors_origins: list[str] = Field([], description="Origins allowed to call, JSON list")
    graceful_timeout_seconds: float = Field(20.0, gt=0, description="Drain time on SIGTERM")

    @model_validator(mode="after")
    def _key_for_zeroweight(self) -> Self:
        if self.backend == "zeroweight" and self.zeroweight_api_key is None:
            raise ValueError(
                "BUNDLES_ZEROWEIGHT_API_KEY is required when BUNDLES_BACKEND=zeroweight"
            )
        return self
