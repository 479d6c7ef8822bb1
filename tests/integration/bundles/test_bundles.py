"""The bundle service against the ZeroWeight double and a real JetStream key-value bucket."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.integration.bundles.conftest import Clock
from tests.integration.conftest import metric_points
from tests.support.zeroweight import API_KEY, ZeroWeightDouble

PATH = "/api/avatars/bundle/{}"


async def test_miss_then_memory_hit_with_the_zeroweight_shape(
    client: httpx.AsyncClient, zeroweight: ZeroWeightDouble
) -> None:
    first = await client.get(PATH.format("ava-1"))
    second = await client.get(PATH.format("ava-1"))
    assert first.status_code == second.status_code == 200
    assert first.json() == {"payload": "payload-of-ava-1"}
    assert first.headers["X-Bundle-Cache"] == "miss"
    assert second.headers["X-Bundle-Cache"] == "memory"
    assert first.headers["ETag"] == second.headers["ETag"]
    assert first.headers["ETag"].startswith('"')
    assert first.headers["Cache-Control"] == "private, max-age=60"
    assert zeroweight.calls == ["ava-1"]
    assert zeroweight.keys_seen == [API_KEY]
    assert API_KEY not in first.text + str(first.headers)


async def test_if_none_match_gives_304(client: httpx.AsyncClient) -> None:
    etag = (await client.get(PATH.format("ava-1"))).headers["ETag"]
    same = await client.get(PATH.format("ava-1"), headers={"If-None-Match": etag})
    assert same.status_code == 304
    assert same.content == b""
    assert same.headers["ETag"] == etag
    listed = await client.get(PATH.format("ava-1"), headers={"If-None-Match": f'"x", W/{etag}'})
    assert listed.status_code == 304
    other = await client.get(PATH.format("ava-1"), headers={"If-None-Match": '"stale-tag"'})
    assert other.status_code == 200


async def test_concurrent_misses_make_one_upstream_call(
    client: httpx.AsyncClient, zeroweight: ZeroWeightDouble
) -> None:
    zeroweight.bundles["ava-2"] = "payload-of-ava-2"
    zeroweight.delay = 0.2
    responses = await asyncio.gather(*(client.get(PATH.format("ava-2")) for _ in range(100)))
    assert {r.status_code for r in responses} == {200}
    assert {r.json()["payload"] for r in responses} == {"payload-of-ava-2"}
    assert zeroweight.calls == ["ava-2"]


async def test_replicas_share_the_jetstream_cache(
    make_client: Callable[..., httpx.AsyncClient], zeroweight: ZeroWeightDouble
) -> None:
    async with make_client() as replica_a, make_client() as replica_b:
        a = await replica_a.get(PATH.format("ava-1"))
        b = await replica_b.get(PATH.format("ava-1"))
    assert (a.headers["X-Bundle-Cache"], b.headers["X-Bundle-Cache"]) == ("miss", "shared")
    assert a.json() == b.json()
    assert a.headers["ETag"] == b.headers["ETag"]
    assert zeroweight.calls == ["ava-1"]


async def test_stale_copy_serves_while_upstream_fails_then_expires(
    client: httpx.AsyncClient,
    zeroweight: ZeroWeightDouble,
    clock: Clock,
    metric_reader: InMemoryMetricReader,
) -> None:
    assert (await client.get(PATH.format("ava-1"))).status_code == 200
    clock.now += 301  # past freshness, inside the 600 s stale window
    zeroweight.fail_with = [503, 503, 503]
    stale = await client.get(PATH.format("ava-1"))
    assert stale.status_code == 200
    assert stale.headers["X-Bundle-Cache"] == "stale"
    assert stale.json() == {"payload": "payload-of-ava-1"}
    assert len(zeroweight.calls) == 4  # the first fetch, then 1 + 2 retries
    clock.now += 600  # past the stale window too; ZeroWeight is resting after failing
    gone = await client.get(PATH.format("ava-1"))
    assert gone.status_code == 503
    assert gone.json()["error"] == "upstream_unavailable"
    assert gone.headers["Retry-After"] == "1"
    assert len(zeroweight.calls) == 4  # not called again while it rests
    outcomes = metric_points(metric_reader, "avatar.bundles.requests")
    assert outcomes[(("avatar.bundles.cache", "stale"),)] == 1


async def test_transient_upstream_errors_are_retried(
    client: httpx.AsyncClient, zeroweight: ZeroWeightDouble
) -> None:
    zeroweight.fail_with = [503, 500]
    response = await client.get(PATH.format("ava-1"))
    assert response.status_code == 200
    assert len(zeroweight.calls) == 3


async def test_upstream_5xx_with_nothing_cached_is_502_json(
    client: httpx.AsyncClient, zeroweight: ZeroWeightDouble
) -> None:
    zeroweight.fail_with = [500, 502, 503]
    response = await client.get(PATH.format("ava-1"))
    assert response.status_code == 502
    assert response.json() == {
        "error": "upstream_unavailable",
        "message": "bundle source is unavailable",
    }
    assert len(zeroweight.calls) == 3  # 1 + BUNDLES_UPSTREAM_RETRIES


async def test_upstream_timeouts_are_bounded(
    make_client: Callable[..., httpx.AsyncClient], zeroweight: ZeroWeightDouble
) -> None:
    zeroweight.delay = 0.5
    async with make_client(upstream_timeout_seconds=0.1, upstream_retries=1) as client:
        response = await client.get(PATH.format("ava-1"))
    assert response.status_code == 502
    assert len(zeroweight.calls) == 2


@pytest.mark.parametrize(
    ("avatar", "status", "error"),
    [("ava-3", 404, "not_found"), ("theirs", 403, "forbidden_avatar")],
)
async def test_upstream_404_and_403_pass_through_clearly(
    client: httpx.AsyncClient, zeroweight: ZeroWeightDouble, avatar: str, status: int, error: str
) -> None:
    zeroweight.private.add("theirs")
    response = await client.get(PATH.format(avatar))
    assert response.status_code == status
    assert response.json()["error"] == error
    assert len(zeroweight.calls) == 1  # not retried


async def test_an_avatar_removed_upstream_leaves_the_caches(
    client: httpx.AsyncClient, zeroweight: ZeroWeightDouble, clock: Clock
) -> None:
    zeroweight.bundles["gone"] = "soon gone"
    assert (await client.get(PATH.format("gone"))).status_code == 200
    del zeroweight.bundles["gone"]
    clock.now += 301
    assert (await client.get(PATH.format("gone"))).status_code == 404
    clock.now -= 301  # even a fresh-looking copy must not come back
    assert (await client.get(PATH.format("gone"))).status_code == 404


async def test_rate_limit_is_honoured_before_upstream_refuses(
    make_client: Callable[..., httpx.AsyncClient],
    zeroweight: ZeroWeightDouble,
    metric_reader: InMemoryMetricReader,
) -> None:
    zeroweight.limit = 4
    zeroweight.bundles |= {f"r{i}": f"p{i}" for i in range(10)}
    async with make_client(upstream_reserve=2) as client:
        codes = [(await client.get(PATH.format(f"r{i}"))).status_code for i in range(2)]
        shed = await client.get(PATH.format("r5"))
        cached = await client.get(PATH.format("r0"))
    # Two calls leave 2 of 4: the reserve. The third request is shed without a call.
    assert codes == [200, 200]
    assert shed.status_code == 503
    assert shed.json()["error"] == "upstream_rate_limited"
    assert 1 <= int(shed.headers["Retry-After"]) <= 60
    assert cached.status_code == 200  # the cache keeps serving
    assert zeroweight.calls == ["r0", "r1"]
    calls = metric_points(metric_reader, "avatar.bundles.upstream.calls")
    assert calls[(("avatar.bundles.upstream.status", "shed"),)] == 1


async def test_upstream_429_stops_calls_for_retry_after(
    make_client: Callable[..., httpx.AsyncClient], zeroweight: ZeroWeightDouble
) -> None:
    zeroweight.fail_with = [429]
    async with make_client(upstream_reserve=0) as client:
        first = await client.get(PATH.format("ava-1"))
        second = await client.get(PATH.format("ava-2"))
    assert first.status_code == second.status_code == 503
    assert zeroweight.calls == ["ava-1"]  # no retry of a 429, and no call while closed


async def test_wrong_server_side_key_is_a_502_not_a_leak(
    make_client: Callable[..., httpx.AsyncClient], zeroweight: ZeroWeightDouble
) -> None:
    async with make_client(zeroweight_api_key="a-wrong-but-real-looking-key") as client:
        response = await client.get(PATH.format("ava-1"))
    assert response.status_code == 502
    assert response.json()["error"] == "bad_upstream"
    assert "wrong" not in response.text


async def test_callers_are_authenticated_and_checked_against_the_policy(
    make_client: Callable[..., httpx.AsyncClient], zeroweight: ZeroWeightDouble
) -> None:
    async with make_client(anonymous=False) as client:
        unauthenticated = await client.get(PATH.format("ava-1"))
        wrong_key = await client.get(PATH.format("ava-1"), headers={"X-API-Key": "nope"})
    async with make_client() as client:
        outside_policy = await client.get(PATH.format("not-allowed"))
    assert unauthenticated.status_code == 401
    assert wrong_key.status_code == 401
    assert outside_policy.status_code == 403
    assert outside_policy.json()["error"] == "forbidden_avatar"
    assert zeroweight.calls == []


async def test_anonymous_calls_from_pages_on_other_sites_need_an_allowed_origin(
    make_client: Callable[..., httpx.AsyncClient], zeroweight: ZeroWeightDouble
) -> None:
    """Else any page could make its visitors' browsers spend the ZeroWeight budget."""
    async with make_client(cors_origins=["https://app.example"]) as client:
        elsewhere = await client.get(PATH.format("ava-1"), headers={"Sec-Fetch-Site": "cross-site"})
        allowed = await client.get(
            PATH.format("ava-1"),
            headers={"Sec-Fetch-Site": "cross-site", "Origin": "https://app.example"},
        )
    assert elsewhere.status_code == 403
    assert elsewhere.json()["error"] == "cross_site_refused"
    assert allowed.status_code == 200
    assert len(zeroweight.calls) == 1


@pytest.mark.parametrize(
    "path",
    [
        "/api/avatars/bundle/..%2F..%2Fetc%2Fpasswd",
        "/api/avatars/bundle/%2E%2E",
        "/api/avatars/bundle/..",
        "/api/avatars/bundle//etc/passwd",
        "/api/avatars/bundle/ava-1%00",
        "/api/avatars/bundle/ava%5C..%5Cx",
        "/api/avatars/bundle/" + "a" * 129,
    ],
)
async def test_hostile_avatar_ids_are_4xx_and_never_reach_upstream(
    client: httpx.AsyncClient, zeroweight: ZeroWeightDouble, path: str
) -> None:
    response = await client.get(path)
    assert 400 <= response.status_code < 500
    assert response.headers["content-type"].startswith("application/json")
    assert zeroweight.calls == []


async def test_a_miss_is_one_trace_from_request_to_upstream_call(
    client: httpx.AsyncClient, spans: InMemorySpanExporter
) -> None:
    assert (await client.get(PATH.format("ava-1"))).status_code == 200
    by_kind = {s.kind.name: s for s in spans.get_finished_spans()}
    server, upstream = by_kind["SERVER"], by_kind["CLIENT"]
    assert server.name == "GET /api/avatars/bundle/{avatar_id}"
    assert dict(server.attributes or {})["avatar.bundles.cache"] == "miss"
    assert upstream.parent is not None
    assert upstream.parent.span_id == server.context.span_id
    assert dict(upstream.attributes or {})["http.response.status_code"] == 200
