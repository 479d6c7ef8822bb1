"""Process entry: configuration (fail fast), telemetry, NATS object-store cache, serve, drain."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from avatar_bundles.app import VERSION, create_app, unsafe_settings
from avatar_bundles.cache import BUCKET, SharedCache
from avatar_bundles.config import BundlesSettings
from avatar_shared.bus import Bus
from avatar_shared.config import ConfigError, LogSettings, NatsSettings, load_or_exit
from avatar_shared.logs import configure_logging
from avatar_shared.telemetry import setup_telemetry
from avatar_shared.web.auth import AuthSettings
from avatar_shared.web.policy import Policy, load_policy
from avatar_shared.web.safety import DeploymentSettings, refuse_unsafe
from avatar_shared.web.service import serve


async def run(
    settings: BundlesSettings, auth: AuthSettings, policy: Policy, nats: NatsSettings
) -> None:
    bus = await Bus.connect(nats, name="avatar-bundles", identity="bundles")
    try:
        store = await bus.ensure_object_store(
            BUCKET,
            ttl_seconds=settings.cache_ttl_seconds + settings.stale_seconds,
            max_bytes=settings.shared_cache_max_bytes,
            replicas=nats.stream_replicas,
        )
        shared = SharedCache(
            store,
            connected=lambda: bus.connected,
            timeout=settings.shared_cache_timeout_seconds,
            max_bytes=settings.max_bundle_bytes,
        )
        app = create_app(settings, auth, policy, shared)
        await serve(
            app,
            host=settings.host,
            port=settings.port,
            graceful_timeout=settings.graceful_timeout_seconds,
            limits=settings.limits,
            metrics_port=settings.metrics_port,
        )
    finally:
        await bus.close()


def main() -> int:
    logs = load_or_exit(LogSettings)
    configure_logging("avatar-bundles", logs.level, logs.format)
    settings = load_or_exit(BundlesSettings)
    auth = load_or_exit(AuthSettings)
    nats = load_or_exit(NatsSettings)
    deployment = load_or_exit(DeploymentSettings)
    try:
        policy = load_policy(Path(auth.policy_file))
        refuse_unsafe(unsafe_settings(settings, auth, policy), deployment)
        telemetry = setup_telemetry("avatar-bundles", VERSION, prometheus=True)
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    try:
        asyncio.run(run(settings, auth, policy, nats))
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    finally:
        telemetry.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
