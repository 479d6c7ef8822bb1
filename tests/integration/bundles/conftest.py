"""The bundle service in memory, wired to the ZeroWeight double and a real JetStream bucket."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider

from avatar_bundles.app import create_app
from avatar_bundles.cache import SharedCache
from avatar_bundles.config import BundlesSettings
from avatar_shared.bus import Bus
from avatar_shared.web.auth import AuthSettings
from avatar_shared.web.policy import Policy
from tests.support.zeroweight import API_KEY, ZeroWeightDouble, running

ALLOWED = ["ava-1", "ava-2", "ava-3", "gone", "theirs", *(f"r{i}" for i in range(10))]
POLICY = Policy.model_validate({"rules": [{"principals": ["anonymous"], "avatars": ALLOWED}]})


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def zeroweight() -> AsyncIterator[ZeroWeightDouble]:
    async with running(ZeroWeightDouble()) as double:
        yield double


@pytest.fixture
async def shared_cache(
    bus: Bus, meter_provider: MeterProvider, clock: Clock
) -> AsyncIterator[SharedCache]:
    bucket = f"bundles_{uuid.uuid4().hex[:8]}"
    store = await bus.ensure_object_store(bucket, ttl_seconds=3600, max_bytes=64 * 1024 * 1024)
    yield SharedCache(
        store,
        connected=lambda: bus.connected,
        timeout=1.0,
        max_bytes=8 * 1024 * 1024,
        wall_clock=clock,  # the replicas' clock, which dates the entries
        meter_provider=meter_provider,
    )
    await bus.delete_object_store(bucket)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_client(
    zeroweight: ZeroWeightDouble,
    shared_cache: SharedCache,
    clock: Clock,
    tracer_provider: TracerProvider,
    meter_provider: MeterProvider,
) -> Callable[..., httpx.AsyncClient]:
    """A replica of the bundle service; each call is a new replica (own memory cache)."""

    def build(
        *, anonymous: bool = True, policy: Policy = POLICY, **overrides: Any
    ) -> httpx.AsyncClient:
        defaults: dict[str, Any] = {
            "backend": "zeroweight",
            "zeroweight_url": zeroweight.url,
            "zeroweight_api_key": API_KEY,
            "cache_ttl_seconds": 300,
            "stale_seconds": 600,
            "upstream_timeout_seconds": 1.0,
        }
        settings = BundlesSettings(**(defaults | overrides))
        app = create_app(
            settings,
            AuthSettings(policy_file="unused", anonymous=anonymous),
            policy,
            shared_cache,
            clock=clock,
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
        )
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://bundles.test"
        )

    return build


@pytest.fixture
async def client(make_client: Callable[..., httpx.AsyncClient]) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client() as client:
        yield client
