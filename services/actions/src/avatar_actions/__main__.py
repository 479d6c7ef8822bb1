"""Process entry: configuration (fail fast), telemetry, NATS, consume until SIGTERM, drain."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

import uvloop
from livekit import api

from avatar_actions.app import (
    VERSION,
    build_publisher,
    consume,
    engine_factory,
    health_app,
    ownership,
    provision,
)
from avatar_actions.config import ActionsSettings
from avatar_shared.bus import Bus
from avatar_shared.config import LiveKitSettings, LogSettings, NatsSettings, load_or_exit
from avatar_shared.logs import configure_logging
from avatar_shared.telemetry import setup_telemetry
from avatar_shared.web.service import serve

log = logging.getLogger(__name__)


async def run(
    settings: ActionsSettings, nats: NatsSettings, livekit: LiveKitSettings | None
) -> None:
    bus = await Bus.connect(nats, name="avatar-actions")
    lk = (
        api.LiveKitAPI(livekit.url, livekit.api_key, livekit.api_secret.get_secret_value())
        if livekit
        else None
    )
    stop = asyncio.Event()
    try:
        stores = await provision(bus, settings, nats.stream_replicas)
        publisher = build_publisher(settings, lk.room if lk else None)
        engines = engine_factory(settings, bus, stores, publisher)
        owner = ownership(settings, stores)
        consuming = asyncio.create_task(consume(settings, bus, owner, engines, stop))
        consuming.add_done_callback(_stop_if_failed)
        app = health_app(lambda: "consumer stopped" if consuming.done() else None)
        await serve(app, host=settings.host, port=settings.port, graceful_timeout=5)
        stop.set()  # SIGTERM: finish the batches in hand, hand the partitions back, drain
        await consuming  # re-raises what stopped the consumer: the process exits non-zero
    finally:
        await bus.close()
        if lk:
            await lk.aclose()


def _stop_if_failed(task: asyncio.Task[None]) -> None:
    """A consumer that died must not leave a process that looks alive: stop it."""
    if not task.cancelled() and task.exception() is not None:
        log.error("consumer failed; stopping the process", exc_info=task.exception())
        signal.raise_signal(signal.SIGTERM)


def main() -> int:
    logs = load_or_exit(LogSettings)
    configure_logging("actions", logs.level, logs.format)
    settings = load_or_exit(ActionsSettings)
    nats = load_or_exit(NatsSettings)
    livekit = load_or_exit(LiveKitSettings) if os.environ.get("LIVEKIT_URL") else None
    telemetry = setup_telemetry("avatar-actions", VERSION, prometheus=True)
    try:
        # uvloop: this process is a NATS client and an HTTP client in one event loop,
        # and its latency is mostly that loop's I/O (docs/benchmarks.md).
        uvloop.run(run(settings, nats, livekit))
    finally:
        telemetry.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
