"""Process entry: configuration (fail fast), telemetry, serve until SIGTERM, drain."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from avatar_shared.config import ConfigError, LiveKitSettings, LogSettings, load_or_exit
from avatar_shared.logs import configure_logging
from avatar_shared.telemetry import setup_telemetry
from avatar_shared.web.auth import AuthSettings
from avatar_shared.web.policy import load_policy
from avatar_shared.web.safety import DeploymentSettings, refuse_unsafe
from avatar_shared.web.service import serve
from avatar_token.app import VERSION, create_app, unsafe_settings
from avatar_token.config import TokenSettings


def main() -> int:
    logs = load_or_exit(LogSettings)
    configure_logging("token", logs.level, logs.format)
    settings = load_or_exit(TokenSettings)
    livekit = load_or_exit(LiveKitSettings)
    auth = load_or_exit(AuthSettings)
    deployment = load_or_exit(DeploymentSettings)
    try:
        policy = load_policy(Path(auth.policy_file))
        refuse_unsafe(unsafe_settings(settings, livekit, auth, policy), deployment)
        telemetry = setup_telemetry("avatar-token", VERSION, prometheus=True)
        app = create_app(settings, livekit, auth, policy)
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    try:
        asyncio.run(
            serve(
                app,
                host=settings.host,
                port=settings.port,
                graceful_timeout=settings.graceful_timeout_seconds,
                limits=settings.limits,
                metrics_port=settings.metrics_port,
            )
        )
    finally:
        telemetry.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
