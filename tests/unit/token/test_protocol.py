"""The GET route's hand-read query documents and validates exactly as FastAPI's would."""

from __future__ import annotations

from typing import Annotated, Any

import pytest
from fastapi import FastAPI, Query

from avatar_shared.events import AvatarId
from avatar_shared.web.errors import ApiError
from avatar_token.protocol import AvatarTokenQuery, DisplayName, RoomName, StandardTokenRequest


def _fastapi_parameters() -> list[dict[str, Any]]:
    app = FastAPI()

    @app.get("/t")
    async def declared(
        avatar_id: Annotated[AvatarId, Query(description="Avatar to talk to")],
        name: Annotated[DisplayName | None, Query(description="Display name")] = None,
        room: Annotated[RoomName | None, Query(description="Room, where policy allows")] = None,
    ) -> None: ...

    parameters: list[dict[str, Any]] = app.openapi()["paths"]["/t"]["get"]["parameters"]
    return parameters


def test_openapi_parameters_are_what_fastapi_writes_for_query_fields() -> None:
    assert AvatarTokenQuery.openapi_parameters() == _fastapi_parameters()


def test_parse_ignores_unknown_parameters_even_repeated() -> None:
    query = AvatarTokenQuery.parse(b"avatar_id=demo&other=x&other=y")
    assert (query.avatar_id, query.name, query.room) == ("demo", None, None)


@pytest.mark.parametrize("query", ["avatar_id=a&avatar_id=demo", "avatar_id=demo&room=r&room=s"])
def test_a_parameter_given_twice_is_refused_not_resolved(query: str) -> None:
    with pytest.raises(ApiError) as info:
        AvatarTokenQuery.parse(query.encode())
    field = query.rsplit("&", 1)[1].split("=")[0]
    assert (info.value.status, info.value.body.field) == (422, field)
    assert "more than once" in info.value.body.message


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"avatar_id": "demo-avatar", "avatar_id": "other"}', "avatar_id"),
        (b'{"avatar_id": "demo-avatar", "participant_attributes": {"k": "a", "k": "b"}}', "k"),
    ],
)
def test_a_json_key_given_twice_is_refused_not_resolved(body: bytes, field: str) -> None:
    with pytest.raises(ApiError) as info:
        StandardTokenRequest.parse(body)
    assert (info.value.status, info.value.body.field) == (422, field)


def test_parse_errors_name_each_parameter() -> None:
    with pytest.raises(ApiError) as info:
        AvatarTokenQuery.parse(b"room=has+space")
    assert (info.value.status, info.value.body.field) == (422, "avatar_id")
    assert info.value.body.message.startswith("avatar_id: Field required; room: String should")


def test_the_query_is_percent_decoded_as_utf8() -> None:
    query = AvatarTokenQuery.parse(b"avatar_id=demo&name=J%C3%BCrgen+M%C3%BCller%20%F0%9F%99%82&x")
    assert (query.avatar_id, query.name) == ("demo", "J\u00fcrgen M\u00fcller \U0001f642")


@pytest.mark.parametrize(
    "query",
    [
        b"avatar_id=demo&name=%FF%FE",  # not UTF-8
        b"avatar_id=demo&name=%ED%A0%80",  # a surrogate, encoded
        b"avatar_id=demo&name=J%C3",  # cut inside a character
        b"avatar_id=demo&name=J\xc3\xbcrgen",  # not percent-encoded
        b"avatar_id=demo%C3&name=x",
    ],
)
def test_a_query_that_is_not_utf8_is_refused_not_replaced(query: bytes) -> None:
    with pytest.raises(ApiError) as info:
        AvatarTokenQuery.parse(query)
    assert (info.value.status, info.value.body.error) == (400, "bad_request")
    assert "UTF-8" in info.value.body.message
