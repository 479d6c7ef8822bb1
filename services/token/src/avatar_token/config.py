"""Settings of the token service (``TOKEN_*``), plus the shared LiveKit and auth settings."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from avatar_shared.ratelimit import Rate
from avatar_shared.web.service import HttpServiceSettings


class TokenSettings(HttpServiceSettings):
    model_config = SettingsConfigDict(env_prefix="TOKEN_", extra="ignore")

    host: str = Field("0.0.0.0", description="Address the token service listens on")  # noqa: S104
    port: int = Field(8100, gt=0, lt=65536, description="Port of the token service")
    public_livekit_url: str | None = Field(
        None, description="LiveKit URL given to browsers, if not LIVEKIT_URL"
    )
    rate_per_ip: Rate = Field("60/minute", description="Token requests allowed per client IP")
    rate_per_principal: Rate = Field("20/minute", description="Token requests allowed per caller")
    body_timeout_seconds: float = Field(
        10.0,
        gt=0,
        le=300,
        description="A POST body must arrive within this of its headers; then 408",
    )
    metrics_port: int = Field(
        8101, gt=0, lt=65536, description="Port of /metrics (Prometheus), apart from the API"
    )
    session_start_seconds: float = Field(
        120.0,
        gt=0,
        le=3600,
        description="How long after issue its session may start (and a quota slot is held)",
    )
    quota_timeout_seconds: float = Field(
        1.0, gt=0, le=10, description="Longest wait for the session count; then 503"
    )
