"""Process entry: configuration (fail fast), telemetry, bootstrap, consume until SIGTERM,
drain."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

import httpx
import uvloop

from avatar_actions.bootstrap import VERSION, bootstrap
from avatar_actions.config import ActionsSettings
from avatar_actions.inspector import Inspector
from avatar_shared.bus import BusAuthError
from avatar_shared.config import (
    ConfigError,
    DeliverySettings,
    LiveKitSettings,
    LogSettings,
    NatsSettings,
    load_or_exit,
)
from avatar_shared.logs import configure_logging
from avatar_shared.telemetry import setup_telemetry
from avatar_shared.web.auth import Authenticator, AuthSettings
from avatar_shared.web.policy import Policy, load_policy
from avatar_shared.web.safety import DeploymentSettings, refuse_unsafe
from avatar_shared.web.service import serve

log = logging.getLogger(__name__)


async def run(
    settings: ActionsSettings,
    nats: NatsSettings,
    livekit: LiveKitSettings | None,
    delivery: DeliverySettings,
    auth: tuple[AuthSettings, Policy] | None = None,
) -> None:
    """``auth``: the access policy's API keys, which the inspector (when on) asks for."""
    service = await bootstrap(settings, nats, livekit, delivery=delivery)
    stop = asyncio.Event()
    http = httpx.AsyncClient()
    inspector = None
    try:
        consuming = asyncio.create_task(service.run(stop))
        consuming.add_done_callback(_stop_if_failed)
        routers = []
        if auth is not None:
            inspector = Inspector(
                service.bus,
                Authenticator.from_settings(auth[0], auth[1], http),
                auth[1],
                anonymous=settings.inspector_anonymous,
                trace_url=settings.inspector_trace_url,
            )
            await inspector.start()
            routers.append(inspector.router())
            log.info("room inspector on http://%s:%d/inspector", settings.host, settings.port)
        app = service.health_app(lambda: "consumer stopped" if consuming.done() else None, routers)
        await serve(app, host=settings.host, port=settings.port, graceful_timeout=5)
        stop.set()  # SIGTERM: finish the batches in hand, hand the partitions back, drain
        await consuming  # re-raises what stopped the consumer: the process exits non-zero
    finally:
        if inspector is not None:
            await inspector.close()
        await service.close()
        await http.aclose()


def _stop_if_failed(task: asyncio.Task[None]) -> None:
    """A consumer that died must not leave a process that looks alive: stop it."""
    if not task.cancelled() and task.exception() is not None:
        log.error("consumer failed; stopping the process", exc_info=task.exception())
        signal.raise_signal(signal.SIGTERM)


def main() -> int:
    logs = load_or_exit(LogSettings)
    configure_logging("avatar-actions", logs.level, logs.format)
    settings = load_or_exit(ActionsSettings)
    nats = load_or_exit(NatsSettings)
    delivery = load_or_exit(DeliverySettings)
    livekit = (
        load_or_exit(LiveKitSettings)
        if os.environ.get("LIVEKIT_URL") and delivery.delivery == "server_api"
        else None
    )
    auth = None
    if settings.inspector:
        auth_settings = load_or_exit(AuthSettings)
        try:
            auth = (auth_settings, load_policy(Path(auth_settings.policy_file)))
            anonymous = ["ACTIONS_INSPECTOR_ANONYMOUS=true lets anyone read every room"]
            refuse_unsafe(
                anonymous if settings.inspector_anonymous else [], load_or_exit(DeploymentSettings)
            )
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    telemetry = setup_telemetry("avatar-actions", VERSION, prometheus=True)
    try:
        # uvloop: this process is a NATS client and an HTTP client in one event loop,
        # and its latency is mostly that loop's I/O (docs/benchmarks.md).
        uvloop.run(run(settings, nats, livekit, delivery, auth))
    except BusAuthError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        telemetry.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
