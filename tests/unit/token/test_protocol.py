"""The GET route's hand-read query documents and validates exactly as FastAPI's would."""

from __future__ import annotations

from typing import Annotated, Any

import pytest
from fastapi import FastAPI, Query
from fastapi.exceptions import RequestValidationError
from starlette.datastructures import QueryParams

from avatar_shared.events import AvatarId
from avatar_token.protocol import AvatarTokenQuery, DisplayName, RoomName


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


def test_parse_keeps_the_last_of_repeated_values_and_ignores_unknown_ones() -> None:
    query = AvatarTokenQuery.parse(QueryParams("avatar_id=first&avatar_id=demo&other=x"))
    assert (query.avatar_id, query.name, query.room) == ("demo", None, None)


def test_parse_errors_locate_each_parameter_in_the_query() -> None:
    with pytest.raises(RequestValidationError) as info:
        AvatarTokenQuery.parse({"room": "has space"})
    assert sorted(tuple(e["loc"]) for e in info.value.errors()) == [
        ("query", "avatar_id"),
        ("query", "room"),
    ]
