"""Settings of the token service (``TOKEN_*``), plus the shared LiveKit and auth settings."""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from avatar_shared.web.ratelimit import parse_rate
from avatar_shared.web.service import ServerLimits


class TokenSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOKEN_", extra="ignore")

    host: str = Field("0.0.0.0", description="Address the token service listens on")  # noqa: S104
    port: int = Field(8100, gt=0, lt=65536, description="Port of the token service")
    public_livekit_url: str | None = Field(
        None, description="LiveKit URL given to browsers, if not LIVEKIT_URL"
    )
    cors_origins: list[str] = Field(
        [],
        description='Origins allowed to call from a browser, JSON list, e.g. ["https://app.example"]',
    )
    rate_per_ip: str = Field("60/minute", description="Token requests allowed per client IP")
    rate_per_principal: str = Field("20/minute", description="Token requests allowed per caller")
    trusted_proxies: list[str] = Field(
        [], description="CIDRs of proxies whose X-Forwarded-For is believed, JSON list"
    )
    graceful_timeout_seconds: float = Field(
        20.0, gt=0, description="Seconds in-flight requests get to finish on SIGTERM"
    )
    metrics_port: int = Field(
        8101, gt=0, lt=65536, description="Port of /metrics (Prometheus), apart from the API"
    )
    header_timeout_seconds: float = Field(
        10.0, gt=0, description="A client must send a request's headers within this"
    )
    max_connections: int = Field(
        1000, ge=1, description="Connections served at once; more are answered 503"
    )
    api_docs: bool = Field(False, description="Serve the interactive /docs page (loads a CDN)")
    session_start_seconds: float = Field(
        120.0,
        gt=0,
        le=3600,
        description="How long an issued token holds a quota slot before its session starts",
    )
    quota_timeout_seconds: float = Field(
        1.0, gt=0, le=10, description="Longest wait for the session count; then 503"
    )

    @property
    def limits(self) -> ServerLimits:
        return ServerLimits(self.header_timeout_seconds, self.max_connections)

    @field_validator("rate_per_ip", "rate_per_principal")
    @classmethod
    def _rate(cls, value: str) -> str:
        parse_rate(value)
        return value
