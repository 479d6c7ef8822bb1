"""The access policy: one TOML file saying who may use which avatar, and how.

The file is documented in ``docs/policy.md``; ``docs/policy.example.toml`` is a
complete example. Rules are tried in order and the first rule that names the caller and
the avatar decides; no matching rule means 403. A broken file stops the service at start.
"""

from __future__ import annotations

import functools
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)
from pydantic_core import SchemaError

from avatar_shared.config import ConfigError, describe
from avatar_shared.web.principal import Principal

TrackSource = Literal["camera", "microphone", "screen_share", "screen_share_audio"]
_PRINCIPAL_REF = re.compile(r"anonymous|api_key:[A-Za-z0-9_-]{1,64}|user:.{1,256}|group:.{1,256}")
_AVATAR_REF = re.compile(r"\*|[A-Za-z0-9][A-Za-z0-9_-]{0,127}")


def _principal_ref(value: str) -> str:
    if not _PRINCIPAL_REF.fullmatch(value):
        raise ValueError(
            "must be 'anonymous', 'api_key:<name>', 'user:<identity>', 'user:*' or 'group:<name>'"
        )
    return value


def _avatar_ref(value: str) -> str:
    if not _AVATAR_REF.fullmatch(value):
        raise ValueError("must be '*' or an avatar id")
    return value


def _anchored_pattern(value: str) -> str:
    if not (value.startswith("^") and value.endswith("$")):
        raise ValueError("must be anchored with ^ and $")
    try:
        _linear(value)
    except SchemaError as exc:
        raise ValueError(
            "not a pattern of the linear-time engine (no look-arounds or backreferences): "
            + str(exc).splitlines()[-1].strip()
        ) from None
    return value


@functools.cache
def _linear(pattern: str) -> TypeAdapter[str]:
    """``pattern`` on pydantic's Rust regex engine, which does not backtrack: matching
    costs time linear in the input whatever the pattern. Python's ``re`` needs seconds
    for ``^(a+)+$`` against 26 characters, so a careless pattern would let any caller
    stall the service with a room name."""
    return TypeAdapter(Annotated[str, StringConstraints(pattern=pattern)])


def pattern_matches(pattern: str, text: str) -> bool:
    """Whether ``text`` matches ``pattern`` (a rule's anchored ``room_pattern``)."""
    try:
        _linear(pattern).validate_python(text)
    except ValidationError:
        return False
    return True


def _microphone_only() -> list[TrackSource]:
    return ["microphone"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


#: Longest session any policy may allow (a day), and the inactivity bounds.
MAX_SESSION_SECONDS = 86_400
SessionSeconds = Annotated[int, Field(ge=30, le=MAX_SESSION_SECONDS)]
InactivitySeconds = Annotated[int, Field(ge=10, le=MAX_SESSION_SECONDS)]
Quota = Annotated[int, Field(ge=1, le=1_000_000)]


class Defaults(_Strict):
    ttl_seconds: int = Field(600, ge=30, description="Token lifetime unless a rule says less")
    max_ttl_seconds: int = Field(3600, ge=30, le=86400, description="Hard cap on any TTL")
    room_prefix: str = Field("avatar", pattern=r"^[a-z0-9][a-z0-9-]{0,31}$")
    agent_name: str = Field("avatar-agent", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    max_session_seconds: SessionSeconds = 1800
    inactivity_timeout_seconds: InactivitySeconds = 300
    max_sessions: Quota | None = None  # the whole deployment's
    max_sessions_per_principal: Quota | None = None
    max_sessions_per_avatar: Quota | None = None


class ApiKey(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="hex SHA-256 of the key")


class Rule(_Strict):
    principals: list[Annotated[str, AfterValidator(_principal_ref)]] = Field(min_length=1)
    avatars: list[Annotated[str, AfterValidator(_avatar_ref)]] = Field(min_length=1)
    ttl_seconds: int | None = Field(None, ge=30)
    custom_rooms: bool = False
    room_pattern: Annotated[str, AfterValidator(_anchored_pattern)] = r"^[A-Za-z0-9_-]{1,128}$"
    client_identity: bool = False
    stable_identity: bool = False
    client_metadata: bool = False
    can_publish_data: bool = True
    can_publish_sources: list[TrackSource] = Field(default_factory=_microphone_only)
    max_session_seconds: SessionSeconds | None = None
    inactivity_timeout_seconds: InactivitySeconds | None = None
    max_sessions_per_principal: Quota | None = None
    max_sessions_per_avatar: Quota | None = None

    def matches(self, principal: Principal, avatar_id: str) -> bool:
        return bool(principal.refs.intersection(self.principals)) and (
            "*" in self.avatars or avatar_id in self.avatars
        )


class Policy(_Strict):
    defaults: Defaults = Field(default_factory=Defaults)
    api_keys: list[ApiKey] = Field(default_factory=list)
    rules: list[Rule] = Field(default_factory=list)

    def rule_for(self, principal: Principal, avatar_id: str) -> Rule | None:
        """The first rule that lets ``principal`` use ``avatar_id``, if any."""
        return next((r for r in self.rules if r.matches(principal, avatar_id)), None)

    def ttl_seconds(self, rule: Rule) -> int:
        return min(rule.ttl_seconds or self.defaults.ttl_seconds, self.defaults.max_ttl_seconds)

    def lifecycle(self, rule: Rule) -> Lifecycle:
        """The session limits of ``rule``, the defaults filling what it leaves out."""
        d = self.defaults
        return Lifecycle(
            max_session_seconds=rule.max_session_seconds or d.max_session_seconds,
            inactivity_timeout_seconds=(
                rule.inactivity_timeout_seconds or d.inactivity_timeout_seconds
            ),
            max_sessions=d.max_sessions,
            max_sessions_per_principal=(
                rule.max_sessions_per_principal or d.max_sessions_per_principal
            ),
            max_sessions_per_avatar=rule.max_sessions_per_avatar or d.max_sessions_per_avatar,
        )


@dataclass(frozen=True)
class Lifecycle:
    """How long a session may last and how many may run at once (None: no cap)."""

    max_session_seconds: int
    inactivity_timeout_seconds: int
    max_sessions: int | None = None
    max_sessions_per_principal: int | None = None
    max_sessions_per_avatar: int | None = None


def load_policy(path: Path) -> Policy:
    """Read and validate a policy file; any problem is a :class:`ConfigError`."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"policy file {path}: {exc}") from None
    try:
        policy = Policy.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"policy file {path}: {describe(exc)}") from None
    names = [key.name for key in policy.api_keys]
    if len(names) != len(set(names)):
        raise ConfigError(f"policy file {path}: api_keys names must be unique")
    return policy
