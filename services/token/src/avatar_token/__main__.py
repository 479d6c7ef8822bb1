"""Process entry: configuration (fail fast), telemetry, serve until SIGTERM, drain."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from avatar_shared.audit import AuditSettings, AuditTrail, audit_stream
from avatar_shared.bus import Bus
from avatar_shared.config import (
    ConfigError,
    LiveKitSettings,
    LogSettings,
    NatsSettings,
    load,
    load_or_exit,
)
from avatar_shared.logs import configure_logging
from avatar_shared.telemetry import setup_telemetry
from avatar_shared.web.auth import AuthSettings
from avatar_shared.web.policy import Policy, load_policy
from avatar_shared.web.safety import DeploymentSettings, refuse_unsafe
from avatar_shared.web.service import serve
from avatar_token.app import VERSION, create_app, unsafe_settings
from avatar_token.config import TokenSettings
from avatar_token.ledger import SessionLedger


def main() -> int:
    logs = load_or_exit(LogSettings)
    configure_logging("avatar-token", logs.level, logs.format)
    settings = load_or_exit(TokenSettings)
    livekit = load_or_exit(LiveKitSettings)
    auth = load_or_exit(AuthSettings)
    deployment = load_or_exit(DeploymentSettings)
    try:
        policy = load_policy(Path(auth.policy_file))
        refuse_unsafe(unsafe_settings(settings, livekit, auth, policy), deployment)
        telemetry = setup_telemetry("avatar-token", VERSION, prometheus=True)
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    try:
        asyncio.run(run(settings, livekit, auth, policy))
    except (ConfigError, ValueError) as exc:  # e.g. NATS refused its credentials
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    finally:
        telemetry.shutdown()
    return 0


async def run(
    settings: TokenSettings, livekit: LiveKitSettings, auth: AuthSettings, policy: Policy
) -> None:
    """Serve with the session quotas and the audit trail on NATS (the token service's
    own identity), until SIGTERM."""
    nats = load(NatsSettings)
    audit_settings = load(AuditSettings)
    bus = await Bus.connect(nats, name="avatar-token", identity="token")
    audit = AuditTrail(bus)
    ledger = SessionLedger(
        bus,
        audit,
        start_window_seconds=settings.session_start_seconds,
        timeout=settings.quota_timeout_seconds,
        replicas=nats.stream_replicas,
    )
    try:
        await bus.ensure_stream(audit_stream(audit_settings, nats.stream_replicas))
        await ledger.provision()
        audit.start()
        ledger.start()
        app = create_app(
            settings,
            livekit,
            auth,
            policy,
            admission=ledger,
            audit=audit,
            audit_settings=audit_settings,
        )
        await serve(
            app,
            host=settings.host,
            port=settings.port,
            graceful_timeout=settings.graceful_timeout_seconds,
            limits=settings.limits,
            metrics_port=settings.metrics_port,
        )
    finally:
        await ledger.aclose()
        await audit.aclose()
        await bus.close()


if __name__ == "__main__":
    raise SystemExit(main())
