"""Settings helpers: every service reads one pydantic-settings class per concern.

Each class has its own environment prefix (``NATS_``, ``TOKEN_``, ...). :func:`load` builds
one and turns a missing or invalid value into :class:`ConfigError`, whose message names
the environment variable; :func:`load_or_exit` prints that message and stops the process.
Secrets are :data:`Secret` fields: no default, and an obvious placeholder is refused.
OpenTelemetry is configured only through the standard ``OTEL_*`` variables, not here.
"""

from __future__ import annotations

import sys
from typing import Annotated, Literal, TypeVar

from pydantic import AfterValidator, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

_PLACEHOLDERS = frozenset(
    {"", "changeme", "change-me", "change_me", "secret", "password", "todo", "xxx", "example"}
)


def _not_placeholder(value: SecretStr) -> SecretStr:
    raw = value.get_secret_value().strip().lower()
    if raw in _PLACEHOLDERS or raw.startswith(("your-", "your_", "<")):
        raise ValueError("is empty or a placeholder; set the real secret")
    return value


Secret = Annotated[SecretStr, AfterValidator(_not_placeholder)]


class NatsSettings(BaseSettings):
    """How a service reaches NATS."""

    model_config = SettingsConfigDict(env_prefix="NATS_", extra="ignore")

    url: str = Field(
        "nats://127.0.0.1:4222",
        description="Comma-separated NATS server URLs; every node of the cluster, ideally",
    )
    creds_file: str | None = Field(
        None, description="Path to a NATS .creds file (JWT/operator mode), if the server uses one"
    )
    nkey_seed_file: str | None = Field(
        None,
        description="Path to this service's NKey seed (its NATS identity; docs/bus-security.md)",
    )
    tls_ca_file: str | None = Field(
        None, description="CA bundle that signs the NATS servers' certificates (tls:// URLs)"
    )
    connect_timeout: float = Field(2.0, gt=0, description="Seconds to wait for each connect")
    drain_timeout: float = Field(30.0, gt=0, description="Seconds allowed to drain on shutdown")
    stream_replicas: int = Field(1, ge=1, le=5, description="Replicas of the events stream")

    @property
    def servers(self) -> list[str]:
        return [url.strip() for url in self.url.split(",") if url.strip()]


class LiveKitSettings(BaseSettings):
    """The LiveKit deployment; the same variables livekit-agents and the LiveKit CLI read."""

    model_config = SettingsConfigDict(env_prefix="LIVEKIT_", extra="ignore")

    url: str = Field(
        pattern=r"^(wss?|https?)://[^\s]+$",
        description="LiveKit server URL, e.g. wss://livekit.example.com",
    )
    api_key: str = Field(min_length=1, description="LiveKit API key (JWT issuer)")
    api_secret: Secret = Field(description="LiveKit API secret (signs tokens)")


class DeliverySettings(BaseSettings):
    """How ``AVATAR_UPDATE`` packets reach a room; read by the actions service and the
    agent alike, so one variable switches both (docs/actions.md, "Delivery")."""

    model_config = SettingsConfigDict(env_prefix="ACTIONS_", extra="ignore")

    delivery: Literal["server_api", "agent"] = Field(
        "server_api",
        description="server_api: the actions service calls LiveKit's SendData; agent: it "
        "hands each packet to the room's agent, which publishes it from its participant",
    )


class LogSettings(BaseSettings):
    """Process logging."""

    model_config = SettingsConfigDict(env_prefix="LOG_", extra="ignore")

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level")
    format: Literal["json", "text"] = Field("json", description="json (one object a line) or text")


class ConfigError(Exception):
    """The environment does not describe a valid configuration."""


def describe(exc: ValidationError, *, root: str = "value") -> str:
    """Every problem of a validation error on one line: ``path.to.field: message; ...``."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or root}: {err['msg']}" for err in exc.errors()
    )


S = TypeVar("S", bound=BaseSettings)


def env_name(settings_cls: type[BaseSettings], field: str) -> str:
    """The environment variable that sets ``field`` of ``settings_cls``."""
    prefix = str(settings_cls.model_config.get("env_prefix", ""))
    info = settings_cls.model_fields[field]
    return (info.validation_alias if isinstance(info.validation_alias, str) else None) or (
        prefix + field
    ).upper()


def load(settings_cls: type[S]) -> S:
    """Build ``settings_cls`` from the environment or raise :class:`ConfigError`."""
    try:
        return settings_cls()
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else ""
            if field in settings_cls.model_fields:
                problems.append(f"{env_name(settings_cls, field)}: {err['msg']}")
            else:  # a check across fields names its variables in its message
                problems.append(str(err["msg"]).removeprefix("Value error, "))
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None


def load_or_exit(settings_cls: type[S]) -> S:
    """:func:`load`, but print the problem and exit with status 2 (for ``__main__``)."""
    try:
        return load(settings_cls)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def settings_table(classes: list[type[BaseSettings]]) -> str:
    """A Markdown table of every variable the given classes read (used by the README)."""
    rows = ["| Variable | Default | Description |", "| --- | --- | --- |"]
    for cls in classes:
        for field, info in cls.model_fields.items():
            default = "*required*" if info.is_required() else f"`{info.get_default()}`"
            if default == "`None`":
                default = "*unset*"
            rows.append(f"| `{env_name(cls, field)}` | {default} | {info.description or ''} |")
    return "\n".join(rows) + "\n"
