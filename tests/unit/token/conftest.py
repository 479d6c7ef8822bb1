"""The token service in memory: real app, real minting, a local OIDC issuer double."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from avatar_shared.config import LiveKitSettings
from avatar_shared.web.auth import AuthSettings, hash_api_key
from avatar_shared.web.policy import Policy
from avatar_token.app import create_app
from avatar_token.config import TokenSettings
from tests.support import oidc

LIVEKIT_KEY = "APIkey123"
LIVEKIT_SECRET = "a-real-looking-livekit-secret-of-some-length-0123456789"
WEB_KEY = "zw-web-backend-key-7d1c0c3f8e"
OPS_KEY = "ops-console-key-55b2a9"

POLICY: dict[str, Any] = {
    "defaults": {"ttl_seconds": 600, "max_ttl_seconds": 900, "agent_name": "avatar-agent"},
    "api_keys": [
        {"name": "web-backend", "sha256": hash_api_key(WEB_KEY)},
        {"name": "ops", "sha256": hash_api_key(OPS_KEY)},
    ],
    "rules": [
        {"principals": ["anonymous"], "avatars": ["demo-avatar"], "ttl_seconds": 120},
        {
            "principals": ["api_key:web-backend"],
            "avatars": ["*"],
            "client_identity": True,
            "client_metadata": True,
        },
        {
            "principals": ["group:staff"],
            "avatars": ["*"],
            "custom_rooms": True,
            "room_pattern": "^staff-[a-z0-9-]{1,40}$",
            "ttl_seconds": 7200,
        },
        {"principals": ["user:*"], "avatars": ["ava-1", "demo-avatar"]},
    ],
}


@pytest.fixture
def issuer() -> oidc.Issuer:
    return oidc.Issuer()


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def metric_reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


AppFactory = Callable[..., AsyncIterator[httpx.AsyncClient]]


@pytest.fixture
def make_client(
    issuer: oidc.Issuer, spans: InMemorySpanExporter, metric_reader: InMemoryMetricReader
) -> Callable[..., Any]:
    """Build the app with settings overrides and return an httpx client bound to it."""

    def build(
        *,
        anonymous: bool = True,
        policy: dict[str, Any] | None = None,
        peer: str = "203.0.113.7",
        **token: Any,
    ) -> httpx.AsyncClient:
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
        app = create_app(
            TokenSettings(**token),
            LiveKitSettings(
                url="wss://livekit.example.test", api_key=LIVEKIT_KEY, api_secret=LIVEKIT_SECRET
            ),
            AuthSettings(
                policy_file="unused-in-tests",
                anonymous=anonymous,
                oidc_issuer=oidc.ISSUER,
                oidc_audience=oidc.AUDIENCE,
                oidc_jwks_url=oidc.JWKS_URL,
            ),
            Policy.model_validate(policy or POLICY),
            http=httpx.AsyncClient(transport=issuer.transport()),
            tracer_provider=tracer_provider,
            meter_provider=MeterProvider(metric_readers=[metric_reader]),
        )
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, client=(peer, 50000)),
            base_url="http://token.test",
        )

    return build


@pytest.fixture
async def client(make_client: Callable[..., httpx.AsyncClient]) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client() as client:
        yield client
