"""What protects ZeroWeight's shared budget and the replicas' memory: request limits,
the negative cache, the rest after failures, big bundles in the shared cache."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import httpx
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from avatar_bundles.bundles import BundleService
from avatar_bundles.cache import FETCHED_AT_HEADER, MAX_CLOCK_SKEW_SECONDS, Cached, SharedCache
from avatar_shared.bus import Bus
from avatar_shared.web.auth import hash_api_key
from avatar_shared.web.policy import Policy
from tests.integration.bundles.conftest import Clock
from tests.integration.conftest import metric_points
from tests.support.zeroweight import ZeroWeightDouble

PATH = "/api/avatars/bundle/{}"
KEY = "budget-test-caller-key-5a1b"
EVERYTHING = Policy.model_validate(
    {
        "api_keys": [{"name": "caller", "sha256": hash_api_key(KEY)}],
        "rules": [{"principals": ["api_key:caller"], "avatars": ["*"]}],
    }
)


async def test_the_same_unknown_avatar_costs_one_upstream_call_per_negative_ttl(
    make_client: Callable[..., httpx.AsyncClient], zeroweight: ZeroWeightDouble, clock: Clock
) -> None:
    async with make_client(negative_ttl_seconds=30) as client:
        codes = {(await client.get(PATH.format("ava-3"))).status_code for _ in range(20)}
        assert zeroweight.calls == ["ava-3"]
        clock.now += 31
        zeroweight.bundles["ava-3"] = "published meanwhile"
        found = await client.get(PATH.format("ava-3"))
    assert codes == {404}
    assert found.status_code == 200
    assert zeroweight.calls == ["ava-3", "ava-3"]


async def test_one_caller_cannot_spend_the_upstream_budget_on_unknown_ids(
    make_client: Callable[..., httpx.AsyncClient], zeroweight: ZeroWeightDouble
) -> None:
    async with make_client(
        anonymous=False, policy=EVERYTHING, rate_per_principal="10/minute"
    ) as client:
        answers = [
            await client.get(PATH.format(f"made-up-{i}"), headers={"X-API-Key": KEY})
            for i in range(100)
        ]
    assert [a.status_code for a in answers] == [404] * 10 + [429] * 90
    assert len(zeroweight.calls) == 10
    refused = answers[-1]
    assert refused.json()["error"] == "rate_limited"
    assert int(refused.headers["Retry-After"]) >= 1
    assert answers[0].headers["X-RateLimit-Remaining"] == "9"


async def test_addresses_are_limited_before_authentication(
    make_client: Callable[..., httpx.AsyncClient], zeroweight: ZeroWeightDouble
) -> None:
    async with make_client(anonymous=False, rate_per_ip="3/minute") as client:
        codes = [
            (await client.get(PATH.format("ava-1"), headers={"X-API-Key": "guess"})).status_code
            for _ in range(5)
        ]
    assert codes == [401, 401, 401, 429, 429]
    assert zeroweight.calls == []


async def test_while_upstream_fails_the_stale_copy_is_served_without_calling_it(
    client: httpx.AsyncClient, zeroweight: ZeroWeightDouble, clock: Clock
) -> None:
    assert (await client.get(PATH.format("ava-1"))).status_code == 200
    clock.now += 301
    zeroweight.fail_with = [503] * 100
    answers = [await client.get(PATH.format("ava-1")) for _ in range(10)]
    assert {a.headers["X-Bundle-Cache"] for a in answers} == {"stale"}
    assert len(zeroweight.calls) == 1 + 3  # the first fetch, then one failed fetch (3 attempts)


async def test_bundles_over_a_nats_message_are_shared_between_replicas(
    make_client: Callable[..., httpx.AsyncClient], zeroweight: ZeroWeightDouble
) -> None:
    zeroweight.bundles["ava-2"] = "B" * (3 * 1024 * 1024)  # NATS' max payload is 1 MiB
    async with make_client() as replica_a, make_client() as replica_b:
        a = await replica_a.get(PATH.format("ava-2"))
        b = await replica_b.get(PATH.format("ava-2"))
    assert (a.headers["X-Bundle-Cache"], b.headers["X-Bundle-Cache"]) == ("miss", "shared")
    assert a.content == b.content
    assert zeroweight.calls == ["ava-2"]


async def test_a_bundle_over_the_limit_is_refused_and_never_cached(
    make_client: Callable[..., httpx.AsyncClient], zeroweight: ZeroWeightDouble
) -> None:
    zeroweight.bundles["ava-2"] = "B" * (2 * 1024 * 1024)
    async with make_client(max_bundle_bytes=1024 * 1024) as client:
        first = await client.get(PATH.format("ava-2"))
        second = await client.get(PATH.format("ava-2"))
    assert first.status_code == second.status_code == 502
    assert first.json() == {
        "error": "bundle_too_large",
        "message": "the bundle is larger than 1048576 bytes",
    }


async def test_failed_shared_cache_writes_are_counted_not_raised(
    bus: Bus, meter_provider: MeterProvider, metric_reader: InMemoryMetricReader
) -> None:
    bucket = f"tiny_{uuid.uuid4().hex[:8]}"
    store = await bus.ensure_object_store(bucket, ttl_seconds=60, max_bytes=256 * 1024)
    try:
        cache = SharedCache(
            store,
            connected=lambda: bus.connected,
            timeout=1.0,
            max_bytes=4 * 1024 * 1024,
            meter_provider=meter_provider,
        )
        await cache.put("big", Cached.of("x" * (1024 * 1024), 1.0))  # over the bucket's size
        assert await cache.get("big") is None
        await cache.put("small", Cached.of("y", 2.0))  # skipped: resting after the failure
    finally:
        await bus.delete_object_store(bucket)
    operations = metric_points(metric_reader, "avatar.bundles.shared_cache.operations")
    assert operations[(("avatar.bundles.cache.operation", "put"), ("avatar.outcome", "error"))] == 1
    assert (
        operations[(("avatar.bundles.cache.operation", "get"), ("avatar.outcome", "skipped"))] == 1
    )


async def test_shared_cache_entries_that_are_not_bundles_read_as_misses(
    bus: Bus, meter_provider: MeterProvider, metric_reader: InMemoryMetricReader
) -> None:
    bucket = f"odd_{uuid.uuid4().hex[:8]}"
    store = await bus.ensure_object_store(bucket, ttl_seconds=60, max_bytes=16 * 1024 * 1024)
    fetched = {FETCHED_AT_HEADER: ["1.0"]}
    try:
        cache = SharedCache(
            store,
            connected=lambda: bus.connected,
            timeout=1.0,
            max_bytes=1024 * 1024,
            meter_provider=meter_provider,
        )
        big = Cached.of("x" * (2 * 1024 * 1024), 1.0)  # written by a replica allowing more
        await store.put("too-large", big.body, headers=fetched)
        await store.put("undated", Cached.of("y", 1.0).body, headers={})
        await store.put("not-a-bundle", b'{"nothing": 1}', headers=fetched)
        # dated later than the skew allows: fresh for hours (or for ever) if believed
        ahead = time.time() + MAX_CLOCK_SKEW_SECONDS + 5
        for key, date in (("from-the-future", repr(ahead)), ("infinite", "inf"), ("nan", "nan")):
            await store.put(key, Cached.of("w", 1.0).body, headers={FETCHED_AT_HEADER: [date]})
        odd = ("too-large", "undated", "not-a-bundle", "from-the-future", "infinite", "nan")
        for key in odd:
            assert await cache.get(key) is None
        slightly_ahead = {FETCHED_AT_HEADER: [repr(time.time() + MAX_CLOCK_SKEW_SECONDS / 2)]}
        await store.put("skewed", Cached.of("v", 1.0).body, headers=slightly_ahead)
        assert await cache.get("skewed") is not None
        await cache.put("fine", Cached.of("z", 3.0))
        found = await cache.get("fine")
        assert found is not None
        assert (found.body, found.fetched_at) == (Cached.of("z", 3.0).body, 3.0)
    finally:
        await bus.delete_object_store(bucket)
    operations = metric_points(metric_reader, "avatar.bundles.shared_cache.operations")
    assert (
        operations[(("avatar.bundles.cache.operation", "get"), ("avatar.outcome", "malformed"))]
        == 6
    )
    assert operations[(("avatar.bundles.cache.operation", "get"), ("avatar.outcome", "hit"))] == 2


async def test_an_unexpected_error_is_a_json_500_with_cors(
    make_client: Callable[..., httpx.AsyncClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(self: BundleService, avatar_id: str) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(BundleService, "get", broken)
    async with make_client(cors_origins=["https://app.example"]) as client:
        response = await client.get(PATH.format("ava-1"), headers={"Origin": "https://app.example"})
    assert response.status_code == 500
    assert response.json()["error"] == "internal_error"
    assert response.headers["access-control-allow-origin"] == "https://app.example"
