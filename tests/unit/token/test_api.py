"""The token endpoints end to end in memory: auth, policy, the minted JWT, errors."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import pytest
from livekit.api import TokenVerifier
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.integration.conftest import metric_points
from tests.support import oidc
from tests.unit.token.conftest import LIVEKIT_KEY, LIVEKIT_SECRET, OPS_KEY, WEB_KEY

PATH = "/api/livekit/token"


def claims_of(token: str) -> dict[str, Any]:
    """Verify as livekit-server does: HS256 with the API secret, nbf/exp checked."""
    TokenVerifier(LIVEKIT_KEY, LIVEKIT_SECRET).verify(token)
    return jwt.decode(token, LIVEKIT_SECRET, algorithms=["HS256"], issuer=LIVEKIT_KEY)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_avatar_session_token_for_anonymous_caller(client: httpx.AsyncClient) -> None:
    before = int(time.time())
    response = await client.get(PATH, params={"avatar_id": "demo-avatar", "name": "Ann Lee"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token"] == body["participant_token"] == body["accessToken"]
    assert body["server_url"] == body["serverUrl"] == body["url"] == "wss://livekit.example.test"
    assert body["room"] == body["room_name"] == body["roomName"]
    assert body["room"].startswith("avatar-demo-avatar-")
    assert body["identity"].startswith("anon-")
    assert response.headers["Cache-Control"] == "no-store"

    claims = claims_of(body["token"])
    assert claims["iss"] == LIVEKIT_KEY
    assert claims["sub"] == body["identity"]
    assert claims["name"] == "Ann Lee"
    assert before - 1 <= claims["nbf"] <= int(time.time())
    assert claims["exp"] - claims["nbf"] == 120 == body["ttl_seconds"]  # the rule's TTL
    assert claims["video"] == {
        "roomJoin": True,
        "room": body["room"],
        "canPublish": True,
        "canSubscribe": True,
        "canPublishData": True,
        "canPublishSources": ["microphone"],
        "canUpdateOwnMetadata": False,
    }
    dispatch = claims["roomConfig"]["agents"]
    assert len(dispatch) == 1
    assert dispatch[0]["agentName"] == "avatar-agent"
    metadata = json.loads(dispatch[0]["metadata"])
    # no session may start in a room created after the start window (TOKEN_SESSION_START_
    # SECONDS, 120), rounded up to 10 s so that the claims change once per 10 s
    start_by = metadata.pop("start_by")
    assert start_by % 10 == 0
    assert before + 120 <= start_by < time.time() + 130
    assert metadata == {
        "avatar_id": "demo-avatar",
        "max_session_seconds": 1800,
        "inactivity_timeout_seconds": 300,
        "single_session": True,  # a generated room: no second session after it ended
    }
    # the room closes when left or never joined; only the user and the agent get in
    room_config = {k: v for k, v in claims["roomConfig"].items() if k != "agents"}
    assert room_config == {"emptyTimeout": 300, "departureTimeout": 10, "maxParticipants": 2}


async def test_every_session_gets_a_fresh_room(client: httpx.AsyncClient) -> None:
    rooms = set()
    for _ in range(5):
        response = await client.get(PATH, params={"avatar_id": "demo-avatar"})
        rooms.add(response.json()["room"])
    assert len(rooms) == 5


async def test_standard_endpoint_answers_201_in_livekit_shape(client: httpx.AsyncClient) -> None:
    response = await client.post(PATH, json={"avatar_id": "demo-avatar", "participant_name": "Bo"})
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {"server_url", "participant_token"}
    claims = claims_of(body["participant_token"])
    assert claims["name"] == "Bo"
    assert claims["roomConfig"]["agents"][0]["agentName"] == "avatar-agent"


async def test_standard_endpoint_takes_the_avatar_from_the_query(client: httpx.AsyncClient) -> None:
    response = await client.post(PATH, params={"avatar_id": "demo-avatar"}, json={})
    assert response.status_code == 201
    missing = await client.post(PATH, json={})
    assert missing.status_code == 422
    assert missing.json() == {
        "error": "invalid_request",
        "message": "avatar_id is required",
        "field": "avatar_id",
    }


async def test_standard_endpoint_refuses_two_different_avatars(client: httpx.AsyncClient) -> None:
    params = {"avatar_id": "demo-avatar"}
    same = await client.post(PATH, params=params, json={"avatar_id": "demo-avatar"})
    assert same.status_code == 201
    response = await client.post(PATH, params=params, json={"avatar_id": "other-avatar"})
    assert response.status_code == 422
    assert response.json() == {
        "error": "invalid_request",
        "message": "avatar_id: the query and the body name different avatars",
        "field": "avatar_id",
    }
    assert "x-ratelimit-remaining" in response.headers


async def test_dispatch_of_the_configured_agent_may_be_asked_for(client: httpx.AsyncClient) -> None:
    body = {"avatar_id": "demo-avatar", "room_config": {"agents": [{"agent_name": "avatar-agent"}]}}
    response = await client.post(PATH, json=body)
    assert response.status_code == 201
    agents = claims_of(response.json()["participant_token"])["roomConfig"]["agents"]
    assert json.loads(agents[0]["metadata"])["avatar_id"] == "demo-avatar"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"participant_identity": "admin"}, "participant_identity"),
        ({"room_name": "my-room"}, "room_name"),
        ({"participant_metadata": "{}"}, "participant_metadata"),
        ({"participant_attributes": {"role": "admin"}}, "participant_attributes"),
        (
            {"room_config": {"agents": [{"agent_name": "other-agent"}]}},
            "room_config.agents.agent_name",
        ),
        ({"room_config": {"agents": [{"metadata": "x"}]}}, "room_config.agents.metadata"),
    ],
)
async def test_fields_the_policy_withholds_are_refused_by_name(
    client: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    response = await client.post(PATH, json={"avatar_id": "demo-avatar", **body})
    assert response.status_code == 403
    assert response.json()["error"] == "forbidden_field"
    assert response.json()["field"] == field


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"avatar_id": "../etc/passwd"}, "avatar_id"),
        ({"avatar_id": "a" * 129}, "avatar_id"),
        ({"avatar_id": ""}, "avatar_id"),
        ({"avatar_id": "demo-avatar", "room": "has space"}, "room"),
        ({"avatar_id": "demo-avatar", "room": "x" * 129}, "room"),
        ({"avatar_id": "demo-avatar", "name": "n" * 129}, "name"),
        ({"avatar_id": "demo-avatar", "name": "bell\x07"}, "name"),
        ({}, "avatar_id"),
    ],
)
async def test_bad_input_is_422_naming_the_field(
    client: httpx.AsyncClient, params: dict[str, str], field: str
) -> None:
    response = await client.get(PATH, params=params)
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "invalid_request"
    assert body["field"] == field
    assert field in body["message"]


@pytest.mark.parametrize(
    "body",
    [
        {"avatar_id": "demo-avatar", "participant_metadata": "x" * 5000},
        {"avatar_id": "demo-avatar", "participant_attributes": {f"k{i}": "v" for i in range(40)}},
        {"avatar_id": "demo-avatar", "unexpected": 1},
        {"avatar_id": "demo-avatar", "room_config": {"max_participants": 100}},
    ],
)
async def test_oversized_or_unknown_body_fields_are_422(
    client: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    response = await client.post(PATH, json=body)
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_request"


@pytest.mark.parametrize("body", [b"{nope", b"", b"[" * 5000, b"\xff\xfe"])
async def test_a_body_that_is_not_json_is_400_bad_request(
    client: httpx.AsyncClient, body: bytes
) -> None:
    response = await client.post(PATH, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json() == {"error": "bad_request", "message": "body is not valid JSON"}
    assert response.headers["X-RateLimit-Remaining"].isdigit()


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_a_query_that_is_not_utf8_is_400_not_a_replaced_name(
    client: httpx.AsyncClient, method: str
) -> None:
    response = await client.request(
        method, f"{PATH}?avatar_id=demo-avatar&name=Ann%FF", json={"avatar_id": "demo-avatar"}
    )
    assert response.status_code == 400
    assert response.json() == {
        "error": "bad_request",
        "message": "the query is not percent-encoded UTF-8",
    }
    assert response.headers["X-RateLimit-Remaining"].isdigit()


async def test_avatar_outside_the_policy_is_403(client: httpx.AsyncClient) -> None:
    response = await client.get(PATH, params={"avatar_id": "private-avatar"})
    assert response.status_code == 403
    assert response.json() == {
        "error": "forbidden_avatar",
        "message": "not allowed to use this avatar",
        "field": "avatar_id",
    }


# --- authentication -----------------------------------------------------------------------


async def test_without_anonymous_access_credentials_are_required(
    make_client: Callable[..., httpx.AsyncClient],
) -> None:
    async with make_client(anonymous=False) as client:
        response = await client.get(PATH, params={"avatar_id": "demo-avatar"})
    assert response.status_code == 401
    assert response.json()["error"] == "unauthenticated"
    assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_api_key_caller_may_name_identity_and_metadata(client: httpx.AsyncClient) -> None:
    response = await client.post(
        PATH,
        headers={"X-API-Key": WEB_KEY},
        json={
            "avatar_id": "any-avatar",
            "participant_identity": "customer-981",
            "participant_metadata": '{"plan":"pro"}',
            "participant_attributes": {"locale": "de-DE"},
        },
    )
    assert response.status_code == 201, response.text
    claims = claims_of(response.json()["participant_token"])
    assert claims["sub"] == "customer-981"
    assert claims["metadata"] == '{"plan":"pro"}'
    assert claims["attributes"] == {"locale": "de-DE"}
    assert claims["exp"] - claims["nbf"] == 600


async def test_api_key_without_a_rule_gets_403_not_anonymous_rights(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get(
        PATH, params={"avatar_id": "demo-avatar"}, headers={"X-API-Key": OPS_KEY}
    )
    assert response.status_code == 403


@pytest.mark.parametrize("key", ["wrong", WEB_KEY + "x", WEB_KEY[:-1], ""])
async def test_wrong_api_key_is_401_even_where_anonymous_is_allowed(
    client: httpx.AsyncClient, key: str
) -> None:
    response = await client.get(
        PATH, params={"avatar_id": "demo-avatar"}, headers={"X-API-Key": key}
    )
    assert response.status_code == 401
    assert response.json() == {"error": "unauthenticated", "message": "API key not recognised"}


async def test_an_api_key_given_twice_is_401_even_where_anonymous_is_allowed(
    client: httpx.AsyncClient,
) -> None:
    headers = [("X-API-Key", WEB_KEY), ("X-API-Key", "a-proxy's-own")]
    response = await client.get(PATH, params={"avatar_id": "demo-avatar"}, headers=headers)
    assert response.status_code == 401
    assert response.json() == {
        "error": "unauthenticated",
        "message": "the x-api-key header is given more than once",
    }


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Sec-Fetch-Site": "cross-site"}, 403),  # an <img> on another site: no Origin
        ({"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"}, 403),
        ({"Sec-Fetch-Site": "same-site", "Origin": "https://other.token.test"}, 403),
        ({"Sec-Fetch-Site": "cross-site", "Origin": "https://app.example"}, 200),
        ({"Sec-Fetch-Site": "same-origin", "Origin": "http://token.test"}, 200),
        ({"Sec-Fetch-Site": "none"}, 200),  # typed in the address bar
        ({}, 200),  # not a browser
        ({"Sec-Fetch-Site": "cross-site", "X-API-Key": WEB_KEY}, 200),  # credentials
    ],
)
async def test_anonymous_calls_from_pages_on_other_sites_need_an_allowed_origin(
    make_client: Callable[..., httpx.AsyncClient], headers: dict[str, str], status: int
) -> None:
    """Else any page could make its visitors' browsers mint tokens, holding session slots."""
    async with make_client(cors_origins=["https://app.example"]) as client:
        response = await client.get(PATH, params={"avatar_id": "demo-avatar"}, headers=headers)
    assert response.status_code == status, response.text
    if status == 403:
        assert response.json()["error"] == "cross_site_refused"
        assert "x-ratelimit-remaining" in response.headers


async def test_oidc_user_identity_comes_from_the_token(
    client: httpx.AsyncClient, issuer: oidc.Issuer
) -> None:
    response = await client.get(
        PATH, params={"avatar_id": "ava-1"}, headers=bearer(issuer.token(sub="alice"))
    )
    assert response.status_code == 200, response.text
    assert re.fullmatch(r"alice-[0-9a-f]{12}", response.json()["identity"])
    assert claims_of(response.json()["token"])["sub"] == response.json()["identity"]
    # and cannot be changed by the caller
    impersonating = await client.post(
        PATH,
        headers=bearer(issuer.token(sub="alice")),
        json={"avatar_id": "ava-1", "participant_identity": "bob"},
    )
    assert impersonating.status_code == 403
    assert impersonating.json()["field"] == "participant_identity"


async def test_group_rule_allows_custom_rooms_and_ttl_is_capped(
    client: httpx.AsyncClient, issuer: oidc.Issuer
) -> None:
    token = issuer.token(sub="carol", groups=["staff"])
    response = await client.get(
        PATH, params={"avatar_id": "ava-9", "room": "staff-standup"}, headers=bearer(token)
    )
    assert response.status_code == 200, response.text
    claims = claims_of(response.json()["token"])
    assert claims["video"]["room"] == "staff-standup"
    assert claims["exp"] - claims["nbf"] == 900  # rule asks 7200, policy caps at 900
    off_pattern = await client.get(
        PATH, params={"avatar_id": "ava-9", "room": "other-room"}, headers=bearer(token)
    )
    assert off_pattern.status_code == 403
    assert off_pattern.json()["field"] == "room"


@pytest.mark.parametrize(
    ("claims", "message"),
    [
        ({"exp": int(time.time()) - 3600}, "bearer token expired"),
        ({"aud": "someone-else"}, "bearer token has the wrong audience"),
        ({"iss": "https://evil.test"}, "bearer token has the wrong issuer"),
        ({"exp": None}, "bearer token is invalid"),
        ({"sub": None}, "bearer token has no 'sub'"),
    ],
)
async def test_invalid_jwts_are_401(
    client: httpx.AsyncClient, issuer: oidc.Issuer, claims: dict[str, Any], message: str
) -> None:
    response = await client.get(
        PATH, params={"avatar_id": "ava-1"}, headers=bearer(issuer.token(**claims))
    )
    assert response.status_code == 401
    assert response.json()["message"] == message


async def test_jwt_signed_by_another_key_is_401(
    client: httpx.AsyncClient, issuer: oidc.Issuer
) -> None:
    forged = issuer.token(key=oidc.Issuer().key)
    response = await client.get(PATH, params={"avatar_id": "ava-1"}, headers=bearer(forged))
    assert response.status_code == 401
    assert response.json()["message"] == "bearer token is invalid"


async def test_unknown_key_ids_do_not_hammer_the_issuer(
    client: httpx.AsyncClient, issuer: oidc.Issuer
) -> None:
    for i in range(10):
        forged = issuer.token(kid=f"made-up-{i}")
        response = await client.get(PATH, params={"avatar_id": "ava-1"}, headers=bearer(forged))
        assert response.status_code == 401
        assert response.json()["message"] == "bearer token signed by an unknown key"
    assert issuer.jwks_requests == 1


@pytest.mark.parametrize(
    "header",
    [
        "Bearer not-a-jwt",
        "Basic dXNlcjpwYXNz",
        "Bearer ",
        "Bearer " + jwt.encode({"sub": "x"}, "k" * 32, algorithm="HS256"),  # symmetric: refused
        "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",  # alg none
    ],
)
async def test_malformed_authorization_is_401(client: httpx.AsyncClient, header: str) -> None:
    response = await client.get(
        PATH, params={"avatar_id": "ava-1"}, headers={"Authorization": header}
    )
    assert response.status_code == 401
    assert response.json()["error"] == "unauthenticated"


# --- abuse limits ------------------------------------------------------------------------------


async def test_per_ip_limit_answers_429_with_retry_after(
    make_client: Callable[..., httpx.AsyncClient], metric_reader: InMemoryMetricReader
) -> None:
    async with make_client(rate_per_ip="3/minute") as client:
        remaining = []
        for _ in range(3):
            response = await client.get(PATH, params={"avatar_id": "demo-avatar"})
            assert response.status_code == 200
            remaining.append(int(response.headers["X-RateLimit-Remaining"]))
        limited = await client.get(PATH, params={"avatar_id": "demo-avatar"})
    assert remaining == [2, 1, 0]
    assert limited.status_code == 429
    assert limited.json()["error"] == "rate_limited"
    assert 1 <= int(limited.headers["Retry-After"]) <= 20
    assert limited.headers["X-RateLimit-Remaining"] == "0"
    refused = metric_points(metric_reader, "avatar.token.refused")
    assert refused == {(("avatar.reason", "rate_limited"),): 1}
    minted = metric_points(metric_reader, "avatar.token.minted")
    assert minted == {(("avatar.principal.kind", "anonymous"),): 3}


async def test_per_principal_limit_follows_the_caller(
    make_client: Callable[..., httpx.AsyncClient], issuer: oidc.Issuer
) -> None:
    async with make_client(rate_per_principal="2/minute") as client:
        alice = bearer(issuer.token(sub="alice"))
        codes = [
            (await client.get(PATH, params={"avatar_id": "ava-1"}, headers=alice)).status_code
            for _ in range(3)
        ]
        other = await client.get(
            PATH, params={"avatar_id": "ava-1"}, headers=bearer(issuer.token(sub="dave"))
        )
    assert codes == [200, 200, 429]
    assert other.status_code == 200


async def test_forwarded_for_is_ignored_from_untrusted_peers(
    make_client: Callable[..., httpx.AsyncClient],
) -> None:
    async with make_client(rate_per_ip="1/minute") as client:
        first = await client.get(PATH, params={"avatar_id": "demo-avatar"})
        spoofed = await client.get(
            PATH, params={"avatar_id": "demo-avatar"}, headers={"X-Forwarded-For": "198.51.100.1"}
        )
    assert first.status_code == 200
    assert spoofed.status_code == 429


async def test_forwarded_for_is_used_behind_a_trusted_proxy(
    make_client: Callable[..., httpx.AsyncClient],
) -> None:
    async with make_client(rate_per_ip="1/minute", trusted_proxies=["203.0.113.0/24"]) as client:
        codes = [
            (
                await client.get(
                    PATH,
                    params={"avatar_id": "demo-avatar"},
                    headers={"X-Forwarded-For": f"198.51.100.{i}"},
                )
            ).status_code
            for i in range(3)
        ]
    assert codes == [200, 200, 200]


async def test_cors_allows_only_configured_origins(
    make_client: Callable[..., httpx.AsyncClient],
) -> None:
    async with make_client(cors_origins=["https://app.example"]) as client:
        allowed = await client.options(
            PATH,
            headers={"Origin": "https://app.example", "Access-Control-Request-Method": "GET"},
        )
        denied = await client.options(
            PATH,
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
        )
        odd_header = await client.options(
            PATH,
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "X-Evil",
            },
        )
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-origin" not in denied.headers
    # refusals are JSON like every other answer, and every answer forbids sniffing
    assert (denied.status_code, denied.json()["error"]) == (400, "cors_refused")
    assert denied.json()["message"] == "Disallowed CORS origin"
    assert (odd_header.status_code, odd_header.json()["error"]) == (400, "cors_refused")
    assert "headers" in odd_header.json()["message"]
    for response in (allowed, denied, odd_header):
        assert response.headers["X-Content-Type-Options"] == "nosniff"


async def test_requests_are_traced_without_personal_data(
    client: httpx.AsyncClient, issuer: oidc.Issuer, spans: InMemorySpanExporter
) -> None:
    response = await client.get(
        PATH,
        params={"avatar_id": "ava-1", "name": "Alice Secret"},
        headers=bearer(issuer.token(sub="alice")),
    )
    assert response.status_code == 200
    server = [s for s in spans.get_finished_spans() if s.kind.name == "SERVER"]
    assert len(server) == 1
    assert server[0].name == f"GET {PATH}"
    attributes = dict(server[0].attributes or {})
    assert attributes["avatar.avatar_id"] == "ava-1"
    assert attributes["avatar.principal.kind"] == "user"
    assert "url.query" not in attributes  # it carries the display name
    flat = json.dumps([dict(s.attributes or {}) for s in spans.get_finished_spans()]).lower()
    assert "alice" not in flat


async def test_health_and_readiness(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).json() == {"status": "ready"}
    # Metrics are for Prometheus, on a port of their own (test_service_processes.py).
    assert (await client.get("/metrics")).status_code == 404


async def test_unknown_routes_answer_json(client: httpx.AsyncClient) -> None:
    response = await client.get("/nope")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"
    wrong_method = await client.delete(PATH)
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"] == "method_not_allowed"


async def test_server_span_continues_the_callers_trace(
    client: httpx.AsyncClient, spans: InMemorySpanExporter
) -> None:
    trace_id, parent_id = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    response = await client.get(
        PATH,
        params={"avatar_id": "demo-avatar"},
        headers={"traceparent": f"00-{trace_id}-{parent_id}-01"},
    )
    assert response.status_code == 200
    (server,) = [s for s in spans.get_finished_spans() if s.kind.name == "SERVER"]
    assert format(server.context.trace_id, "032x") == trace_id
    assert server.parent is not None
    assert format(server.parent.span_id, "016x") == parent_id
    assert dict(server.attributes or {})["http.response.status_code"] == 200


async def test_refusals_are_recorded_on_the_span_and_counted(
    client: httpx.AsyncClient, spans: InMemorySpanExporter, metric_reader: InMemoryMetricReader
) -> None:
    response = await client.get(PATH, params={"avatar_id": "private-avatar"})
    assert response.status_code == 403
    (server,) = [s for s in spans.get_finished_spans() if s.kind.name == "SERVER"]
    attributes = dict(server.attributes or {})
    assert attributes["avatar.outcome"] == "refused"
    assert attributes["http.response.status_code"] == 403
    assert metric_points(metric_reader, "avatar.token.refused") == {
        (("avatar.reason", "forbidden_avatar"),): 1
    }
