"""Settings that are fine on a laptop and dangerous in production, refused at start.

Each check returns the problems it finds as sentences naming the variable; a service
collects them and calls :func:`refuse_unsafe`, which stops the process unless
``AVATAR_DEV_MODE=true`` says this is a local or development deployment (then each
problem is logged as a warning instead).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from avatar_shared.config import ConfigError
from avatar_shared.web.policy import Policy

log = logging.getLogger(__name__)

#: LiveKit itself refuses shorter API secrets.
MIN_SECRET_LENGTH = 32
#: A trusted-proxy network this wide is not a set of proxies.
_MIN_PREFIX = {4: 8, 6: 32}
_LOOPBACK_HOSTS = frozenset({"localhost"})


class DeploymentSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AVATAR_", extra="ignore")

    dev_mode: bool = Field(
        False, description="Allow settings unsafe in production (local and development only)"
    )


def weak_secret(variable: str, secret: str) -> list[str]:
    if len(secret) < MIN_SECRET_LENGTH:
        return [f"{variable} is shorter than {MIN_SECRET_LENGTH} characters"]
    return []


def broad_proxies(variable: str, networks: Iterable[str]) -> list[str]:
    problems = []
    for value in networks:
        net = ipaddress.ip_network(value, strict=False)
        if net.prefixlen < _MIN_PREFIX[net.version]:
            problems.append(
                f"{variable} trusts {net}: any client could choose its own address"
                f" (narrower than /{_MIN_PREFIX[net.version]} please)"
            )
    return problems


def open_cors(variable: str, origins: Sequence[str]) -> list[str]:
    problems = []
    if any("*" in origin for origin in origins):
        problems.append(f"{variable} allows every origin ('*')")
    if any(origin.strip().lower() == "null" for origin in origins):
        # what sandboxed frames, data: URLs and local files send: any page can be one
        problems.append(f"{variable} allows the 'null' origin, which any page can take")
    return problems


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def plain_text_url(variable: str, url: str | None) -> list[str]:
    """An ``http://`` or ``ws://`` URL to anything but this machine."""
    if not url:
        return []
    parts = urlsplit(url)
    if parts.scheme in ("http", "ws") and not _is_loopback(parts.hostname or ""):
        return [f"{variable} ({parts.scheme}://{parts.hostname}) is not encrypted"]
    return []


def anonymous_everything(anonymous: bool, policy: Policy) -> list[str]:
    for rule in policy.rules:
        if anonymous and "anonymous" in rule.principals and "*" in rule.avatars:
            return ["AUTH_ANONYMOUS=true with a policy rule giving anonymous callers every avatar"]
    return []


def refuse_unsafe(problems: Sequence[str], deployment: DeploymentSettings) -> None:
    """Raise :class:`ConfigError` listing ``problems``, unless in development mode."""
    if not problems:
        return
    if deployment.dev_mode:
        for problem in problems:
            log.warning("unsafe outside development: %s", problem)
        return
    raise ConfigError(
        "unsafe for production: "
        + "; ".join(problems)
        + " (AVATAR_DEV_MODE=true allows this for local development only)"
    )
