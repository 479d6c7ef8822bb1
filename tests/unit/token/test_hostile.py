"""The token service against hostile or careless clients, in memory (the same cases as
processes, with memory and time measured, are in tests/integration/hardening/)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from starlette.requests import ClientDisconnect

from avatar_token.minting import Minter
from tests.support import oidc

PATH = "/api/livekit/token"
DEMO = {"avatar_id": "demo-avatar"}


async def test_a_body_over_64_kib_is_413_before_it_is_read_whole(
    client: httpx.AsyncClient,
) -> None:
    declared = await client.post(PATH, content=b"{" + b" " * 70_000 + b"}")
    assert declared.status_code == 413
    assert declared.json()["error"] == "body_too_large"
    assert declared.headers["X-RateLimit-Remaining"].isdigit()

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked
        for _ in range(100):
            yield b" " * 1024

    streamed = await client.post(PATH, content=chunks())
    assert streamed.status_code == 413


async def test_bad_bodies_are_charged_to_the_senders_address_first(
    make_client: Callable[..., httpx.AsyncClient],
) -> None:
    async with make_client(rate_per_ip="2/minute") as client:
        codes = [(await client.post(PATH, content=b"junk")).status_code for _ in range(3)]
        huge = await client.post(PATH, content=b" " * 1_000_000)
    assert codes == [400, 400, 429]
    assert huge.status_code == 429  # refused before a byte of it was read


async def test_validation_errors_carry_the_remaining_budget(client: httpx.AsyncClient) -> None:
    response = await client.get(PATH, params={"avatar_id": "../etc"})
    assert response.status_code == 422
    assert response.headers["X-RateLimit-Remaining"].isdigit()
    post = await client.post(PATH, json={"avatar_id": "demo-avatar", "unexpected": 1})
    assert post.status_code == 422
    assert post.headers["X-RateLimit-Remaining"].isdigit()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"participant_metadata": "ok\u202eevil"}, "participant_metadata"),
        ({"participant_metadata": "nul\x00"}, "participant_metadata"),
        ({"participant_attributes": {"k": "line\nbreak"}}, "participant_attributes"),
        ({"participant_attributes": {"k": "\u2066isolate"}}, "participant_attributes"),
        ({"participant_name": "bob\u202e"}, "participant_name"),
        ({"participant_name": "bob\u2028alice"}, "participant_name"),  # a line separator
        ({"participant_name": "tab\tbed"}, "participant_name"),
        ({"participant_name": "   "}, "participant_name"),  # blank
        ({"participant_attributes": {"k": "para\u2029graph"}}, "participant_attributes"),
    ],
)
async def test_control_and_bidi_characters_are_refused(
    client: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    response = await client.post(PATH, json=DEMO | body, headers={"X-API-Key": oidc_free_key()})
    assert response.status_code == 422
    assert response.json()["field"].startswith(field)


@pytest.mark.parametrize(
    "name",
    [
        "Jean\u00a0Dupont",  # a no-break space, as French typography and copy-paste give
        "Zo\u00eb \u674e",
        "\u0645\u06cc\u200c\u062e\u0648\u0627\u0645",  # Persian: a zero-width non-joiner
        "Sam \U0001f469\u200d\U0001f4bb",  # an emoji ZWJ sequence
        "\U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f",  # a flag
        "Ana \U0001fae8",  # an emoji newer than Python 3.11's Unicode tables
    ],
)
async def test_names_people_really_have_are_accepted(client: httpx.AsyncClient, name: str) -> None:
    response = await client.get(PATH, params=DEMO | {"name": name})
    assert response.status_code == 200, response.text
    assert response.json()["participant_name"] == name


def oidc_free_key() -> str:
    from tests.unit.token.conftest import WEB_KEY

    return WEB_KEY


async def test_metadata_may_still_hold_line_breaks(client: httpx.AsyncClient) -> None:
    response = await client.post(
        PATH,
        json=DEMO | {"participant_metadata": '{\n\t"plan": "pro"\r\n}'},
        headers={"X-API-Key": oidc_free_key()},
    )
    assert response.status_code == 201, response.text


async def test_every_method_of_the_path_is_in_allow(client: httpx.AsyncClient) -> None:
    for method in ("OPTIONS", "DELETE", "PUT"):
        response = await client.request(method, PATH)
        assert response.status_code == 405
        assert response.json()["error"] == "method_not_allowed"
        assert set(response.headers["Allow"].split(", ")) >= {"GET", "POST"}


async def test_openapi_declares_the_credentials_it_takes(
    make_client: Callable[..., httpx.AsyncClient],
) -> None:
    async with make_client(anonymous=False) as client:
        document = (await client.get("/openapi.json")).json()
    assert document["components"]["securitySchemes"] == {
        "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
    }
    assert document["security"] == [{"apiKey": []}, {"bearer": []}]
    body = document["paths"][PATH]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/StandardTokenRequest"}
    assert "StandardTokenRequest" in document["components"]["schemas"]
    assert "RoomConfigRequest" in document["components"]["schemas"]


@pytest.mark.parametrize(("enabled", "status"), [(False, 404), (True, 200)])
async def test_docs_page_only_when_enabled(
    make_client: Callable[..., httpx.AsyncClient], enabled: bool, status: int
) -> None:
    async with make_client(api_docs=enabled) as client:
        assert (await client.get("/docs")).status_code == status


async def test_every_answer_says_nosniff(client: httpx.AsyncClient) -> None:
    for response in (
        await client.get(PATH, params=DEMO),
        await client.get(PATH),
        await client.get("/nope"),
        await client.get("/healthz"),
    ):
        assert response.headers["X-Content-Type-Options"] == "nosniff"


async def test_an_unexpected_error_is_a_json_500_a_browser_can_read(
    make_client: Callable[..., httpx.AsyncClient],
    monkeypatch: pytest.MonkeyPatch,
    spans: InMemorySpanExporter,
) -> None:
    def broken(self: Minter, session: object) -> None:
        raise RuntimeError("signing broke")

    monkeypatch.setattr(Minter, "mint", broken)
    async with make_client(cors_origins=["https://app.example"]) as client:
        response = await client.get(PATH, params=DEMO, headers={"Origin": "https://app.example"})
        after = await client.get("/healthz")
    assert response.status_code == 500
    body = response.json()
    assert body["error"] == "internal_error"
    (server,) = [s for s in spans.get_finished_spans() if s.kind.name == "SERVER"]
    assert format(server.context.trace_id, "032x") in body["message"]
    assert response.headers["access-control-allow-origin"] == "https://app.example"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert [e.name for e in server.events] == ["exception"]
    assert after.status_code == 200


async def test_a_client_that_hangs_up_is_499_not_a_server_error(
    make_client: Callable[..., httpx.AsyncClient],
    monkeypatch: pytest.MonkeyPatch,
    spans: InMemorySpanExporter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def gone(request: object, limit: int, seconds: float) -> bytes:
        raise ClientDisconnect

    monkeypatch.setattr("avatar_token.api.read_body", gone)
    async with make_client() as client:
        response = await client.post(PATH, json={"avatar_id": "demo-avatar"})
        after = await client.get(PATH, params=DEMO)
    assert response.status_code == 499
    assert response.json()["error"] == "client_closed_request"
    (server, _) = [s for s in spans.get_finished_spans() if s.kind.name == "SERVER"]
    assert server.attributes is not None
    assert server.attributes["http.response.status_code"] == 499
    assert server.status.status_code is StatusCode.UNSET
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert after.status_code == 200


async def test_ipv6_neighbours_in_one_64_are_one_caller(
    make_client: Callable[..., httpx.AsyncClient],
) -> None:
    async with make_client(rate_per_ip="1/minute", trusted_proxies=["203.0.113.0/24"]) as client:

        async def via(address: str) -> int:
            headers = {"X-Forwarded-For": address}
            return (await client.get(PATH, params=DEMO, headers=headers)).status_code

        assert await via("2001:db8:1:2::1") == 200
        assert await via("2001:db8:1:2:ffff::9") == 429  # same /64
        assert await via("2001:db8:1:3::1") == 200


async def test_a_forwarded_hop_that_is_not_an_address_is_not_believed(
    make_client: Callable[..., httpx.AsyncClient],
) -> None:
    async with make_client(rate_per_ip="1/minute", trusted_proxies=["203.0.113.0/24"]) as client:

        async def via(header: str) -> int:
            headers = {"X-Forwarded-For": header}
            return (await client.get(PATH, params=DEMO, headers=headers)).status_code

        assert await via("nonsense") == 200  # the proxy (203.0.113.7) stands for the client
        assert await via("other-nonsense") == 429  # ... so junk cannot mint new buckets
        assert await via("198.51.100.4, junk") == 429


async def test_an_unreachable_issuer_is_503_auth_unavailable(
    make_client: Callable[..., httpx.AsyncClient], issuer: oidc.Issuer
) -> None:
    issuer.failing = True
    async with make_client() as client:
        headers = {"Authorization": f"Bearer {issuer.token()}"}
        responses = [await client.get(PATH, params=DEMO, headers=headers) for _ in range(30)]
    assert {r.status_code for r in responses} == {503}
    assert responses[0].json()["error"] == "auth_unavailable"
    assert int(responses[0].headers["Retry-After"]) >= 1
    assert issuer.jwks_requests == 1
