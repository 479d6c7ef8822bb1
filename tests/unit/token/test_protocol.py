"""The GET route's hand-read query documents and validates exactly as FastAPI's would."""

from __future__ import annotations

from typing import Annotated, Any

import pytest
from fastapi import FastAPI, Query
from starlette.datastructures import QueryParams

from avatar_shared.events import AvatarId
from avatar_shared.web.errors import ApiError
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


def test_parse_errors_name_each_parameter() -> None:
    with pytest.raises(ApiError) as info:
        AvatarTokenQuery.parse({"room": "has space"})
    assert (info.value.status, info.value.body.field) == (422, "avatar_id")
    assert info.value.body.message.startswith("avatar_id: Field required; room: String should")
