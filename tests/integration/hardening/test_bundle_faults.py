"""The bundle service as a process against a faulty ZeroWeight: every defect a clear JSON
answer, in bounded time and memory, and the service answers normally afterwards."""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections.abc import AsyncIterator
from email.utils import formatdate
from pathlib import Path

import httpx
import pytest

from tests.integration.hardening.conftest import CALLER_KEY, MAX_GROWTH_MIB, bundles_env
from tests.support.nats_server import free_port, start_nats_process
from tests.support.service_process import ServiceProcess, running_service
from tests.support.zeroweight import ZeroWeightDouble

AUTH = {"X-API-Key": CALLER_KEY}
_ids = (f"avatar-{i}" for i in itertools.count())


def fresh_avatar(zeroweight: ZeroWeightDouble) -> str:
    avatar = next(_ids)
    zeroweight.bundles[avatar] = f"payload-of-{avatar}"
    return avatar


async def get(service: ServiceProcess, avatar: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:
        return await client.get(f"/api/avatars/bundle/{avatar}", headers=AUTH)


async def answers_normally(service: ServiceProcess, zeroweight: ZeroWeightDouble) -> None:
    """A new avatar is fetched from upstream again once the gate has reopened."""
    zeroweight.fault = None
    async with asyncio.timeout(10):
        while True:
            response = await get(service, fresh_avatar(zeroweight))
            if response.status_code == 200:
                assert response.headers["X-Bundle-Cache"] == "miss"
                return
            assert response.status_code == 503, response.text  # resting after failures
            await asyncio.sleep(0.2)


@pytest.fixture
async def healthy_after(
    bundles: ServiceProcess, zeroweight: ZeroWeightDouble
) -> AsyncIterator[None]:
    zeroweight.fault = None
    zeroweight.fail_with.clear()
    yield
    await answers_normally(bundles, zeroweight)
    assert bundles.proc.poll() is None


@pytest.mark.usefixtures("healthy_after")
@pytest.mark.parametrize(
    ("fault", "status", "error", "within"),
    [
        ("gzip_bomb", 502, "bundle_too_large", 5.0),
        ("oversized", 502, "bundle_too_large", 5.0),
        ("drip", 502, "upstream_unavailable", 4.0),  # the 3 s deadline, not 30 s of bytes
        ("truncated", 502, "upstream_unavailable", 4.0),
        ("invalid_gzip", 502, "bad_upstream", 2.0),
        ("deep_nesting", 502, "bad_upstream", 2.0),
        ("not_json", 502, "bad_upstream", 2.0),
    ],
)
async def test_a_broken_upstream_answer_is_a_bounded_json_502(
    bundles: ServiceProcess,
    zeroweight: ZeroWeightDouble,
    fault: str,
    status: int,
    error: str,
    within: float,
) -> None:
    zeroweight.fault = fault
    bundles.reset_peak()
    before = bundles.rss_mib()
    started = time.monotonic()
    response = await get(bundles, fresh_avatar(zeroweight))
    elapsed = time.monotonic() - started
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"] == error
    assert elapsed < within
    assert bundles.peak_mib() - before < MAX_GROWTH_MIB, bundles.peak_mib()


@pytest.mark.usefixtures("healthy_after")
async def test_a_slow_upstream_costs_one_deadline_not_three_timeouts(
    bundles: ServiceProcess, zeroweight: ZeroWeightDouble
) -> None:
    zeroweight.delay = 8.0
    try:
        started = time.monotonic()
        response = await get(bundles, fresh_avatar(zeroweight))
        elapsed = time.monotonic() - started
    finally:
        zeroweight.delay = 0.0
    assert response.status_code == 502
    assert response.json()["error"] == "upstream_unavailable"
    assert elapsed < 4.0  # BUNDLES_UPSTREAM_DEADLINE_SECONDS=3


def _http_date(seconds_from_now: float) -> str:
    return formatdate(time.time() + seconds_from_now, usegmt=True)


@pytest.mark.usefixtures("healthy_after")
@pytest.mark.parametrize(
    "retry_after",
    ["inf", "nan", "-1", "99999999999", "9" * 400, "soon", "", "1.5", "__date__"],
)
async def test_no_retry_after_breaks_the_gate_or_shuts_it_for_long(
    bundles: ServiceProcess, zeroweight: ZeroWeightDouble, retry_after: str
) -> None:
    zeroweight.retry_after = _http_date(10**6) if retry_after == "__date__" else retry_after
    zeroweight.fail_with = [429]
    try:
        limited = await get(bundles, fresh_avatar(zeroweight))
        assert limited.status_code == 503, limited.text
        assert limited.json()["error"] == "upstream_rate_limited"
        # honoured at most BUNDLES_UPSTREAM_MAX_RETRY_AFTER_SECONDS=2
        assert 1 <= int(limited.headers["Retry-After"]) <= 2
        shed = await get(bundles, fresh_avatar(zeroweight))
        assert shed.status_code == 503  # the gate is closed: nothing was sent upstream
    finally:
        zeroweight.retry_after = "30"
    await asyncio.sleep(2.1)
    ok = await get(bundles, fresh_avatar(zeroweight))
    assert ok.status_code == 200, ok.text


async def test_without_nats_a_miss_costs_no_extra_time_and_the_service_stays_ready(
    zeroweight: ZeroWeightDouble, policy_file: Path
) -> None:
    nats = start_nats_process()
    port = free_port()
    env = bundles_env(zeroweight, nats, port, policy_file) | {"OTEL_SDK_DISABLED": "false"}
    try:
        async with running_service("avatar_bundles", env, f"http://127.0.0.1:{port}") as service:
            assert (await get(service, fresh_avatar(zeroweight))).status_code == 200
            nats.stop()
            timings = []
            for _ in range(5):
                started = time.monotonic()
                response = await get(service, fresh_avatar(zeroweight))
                timings.append(time.monotonic() - started)
                assert response.status_code == 200, response.text
            assert max(timings) < 1.5, timings  # at most one shared-cache timeout (0.5 s)
            assert sum(timings[1:]) < 1.0, timings  # then the cache is skipped
            async with httpx.AsyncClient() as client:
                assert (await client.get(f"{service.url}/readyz")).status_code == 200
                scrape = f"http://127.0.0.1:{env['BUNDLES_METRICS_PORT']}/metrics"
                metrics = (await client.get(scrape)).text
            assert re.search(r"\navatar_bundles_shared_cache_up\{[^}]*\} 0\.0\n", metrics)
            assert 'avatar_bundles_cache_operation="get",avatar_outcome="skipped"' in metrics
    finally:
        nats.stop()
