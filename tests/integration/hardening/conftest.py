"""The HTTP services as processes, with their upstreams' doubles, for the fault suite."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from avatar_shared.web.auth import hash_api_key
from tests.support.nats_server import NatsServer, free_port
from tests.support.service_process import ServiceProcess, running_service, token_env
from tests.support.zeroweight import API_KEY, ZeroWeightDouble, running

ROOT = Path(__file__).parents[3]
CALLER_KEY = "fault-suite-caller-key-0d9f2e"
#: Peak resident memory a request may add to a service, whatever it sends or receives.
MAX_GROWTH_MIB = 40.0


def bundles_env(
    zeroweight: ZeroWeightDouble, nats: NatsServer, port: int, policy: Path
) -> dict[str, str]:
    nats_url, nkey_seed_file = nats.url, str(nats.settings("bundles").nkey_seed_file)
    return {
        "BUNDLES_HOST": "127.0.0.1",
        "BUNDLES_PORT": str(port),
        "BUNDLES_METRICS_PORT": str(free_port()),
        "BUNDLES_BACKEND": "zeroweight",
        "BUNDLES_ZEROWEIGHT_URL": zeroweight.url,
        "BUNDLES_ZEROWEIGHT_API_KEY": API_KEY,
        "BUNDLES_UPSTREAM_TIMEOUT_SECONDS": "2",
        "BUNDLES_UPSTREAM_DEADLINE_SECONDS": "3",
        "BUNDLES_UPSTREAM_MAX_RETRY_AFTER_SECONDS": "2",
        "BUNDLES_UPSTREAM_MAX_BACKOFF_SECONDS": "0.5",
        "BUNDLES_SHARED_CACHE_TIMEOUT_SECONDS": "0.5",
        "BUNDLES_RATE_PER_IP": "100000/minute",
        "BUNDLES_RATE_PER_PRINCIPAL": "100000/minute",
        "BUNDLES_HEADER_TIMEOUT_SECONDS": "1",
        "AUTH_POLICY_FILE": str(policy),
        "NATS_URL": nats_url,
        "NATS_NKEY_SEED_FILE": nkey_seed_file,
        "OTEL_SDK_DISABLED": "true",
    }


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("policy") / "policy.toml"
    path.write_text(
        f"""
[[api_keys]]
name = "suite"
sha256 = "{hash_api_key(CALLER_KEY)}"

[[rules]]
principals = ["api_key:suite"]
avatars = ["*"]
"""
    )
    return path


@pytest.fixture(scope="module")
async def zeroweight() -> AsyncIterator[ZeroWeightDouble]:
    async with running(ZeroWeightDouble(limit=10**9)) as double:
        yield double


@pytest.fixture(scope="module")
async def bundles(
    zeroweight: ZeroWeightDouble, nats_server: NatsServer, policy_file: Path
) -> AsyncIterator[ServiceProcess]:
    port = free_port()
    env = bundles_env(zeroweight, nats_server, port, policy_file)
    async with running_service("avatar_bundles", env, f"http://127.0.0.1:{port}") as service:
        yield service


@pytest.fixture(scope="module")
async def token(nats_server: NatsServer) -> AsyncIterator[ServiceProcess]:
    port = free_port()
    async with running_service(
        "avatar_token",
        token_env(
            nats_server,
            port,
            ROOT / "deploy" / "local" / "policy.toml",
            TOKEN_HEADER_TIMEOUT_SECONDS="1",
            TOKEN_BODY_TIMEOUT_SECONDS="1",
            AUTH_ANONYMOUS="true",
        ),
        f"http://127.0.0.1:{port}",
    ) as service:
        yield service
