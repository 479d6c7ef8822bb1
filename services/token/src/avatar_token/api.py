"""HTTP routes of the token service; the contract itself is in :mod:`avatar_token.protocol`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from avatar_shared.events import AvatarId
from avatar_shared.web.clientip import ClientAddress
from avatar_shared.web.errors import ApiError, error_responses
from avatar_token.issuer import REMAINING_HEADER, Issued, TokenIssuer
from avatar_token.protocol import (
    AvatarTokenQuery,
    AvatarTokenResponse,
    StandardTokenRequest,
    StandardTokenResponse,
    room_config_agents,
)
from avatar_token.sessions import SessionRequest

TOKEN_PATH = "/api/livekit/token"  # noqa: S105 (a route, not a password)
_ERRORS = error_responses(400, 401, 403, 422, 429)


def token_router(issuer: TokenIssuer, client_address: ClientAddress, server_url: str) -> APIRouter:
    router = APIRouter(tags=["tokens"])

    async def issue(request: Request, session: SessionRequest) -> tuple[Issued, dict[str, str]]:
        peer = request.client.host if request.client else None
        client_ip = client_address.resolve(peer, request.headers.get("x-forwarded-for"))
        issued = await issuer.issue(request.headers, client_ip, session)
        headers = {REMAINING_HEADER: str(issued.remaining), "Cache-Control": "no-store"}
        return issued, headers

    # The query is validated by one pydantic call instead of FastAPI's per-parameter
    # machinery, which cost this hot route more than its auth and policy together
    # (docs/benchmarks.md); errors and the OpenAPI parameters are the same as FastAPI's.
    @router.get(
        TOKEN_PATH,
        response_model=AvatarTokenResponse,
        responses=_ERRORS,
        openapi_extra={"parameters": AvatarTokenQuery.openapi_parameters()},
    )
    async def avatar_token(request: Request) -> Response:
        """Token for ZeroWeight's `LiveKitAvatarSession` (`getLiveKitToken`)."""
        query = AvatarTokenQuery.parse(request.query_params)
        issued, headers = await issue(
            request, SessionRequest(avatar_id=query.avatar_id, room=query.room, name=query.name)
        )
        s = issued.session
        body = AvatarTokenResponse(
            token=issued.token,
            participant_token=issued.token,
            accessToken=issued.token,
            server_url=server_url,
            serverUrl=server_url,
            url=server_url,
            room=s.room,
            room_name=s.room,
            roomName=s.room,
            identity=s.identity,
            participant_identity=s.identity,
            participant_name=s.name,
            avatar_id=s.avatar_id,
            expires_at=issued.expires_at,
            ttl_seconds=s.ttl_seconds,
        )
        # Serialised here, once: FastAPI would validate the model a second time.
        return Response(body.model_dump_json(), media_type="application/json", headers=headers)

    @router.post(
        TOKEN_PATH, status_code=201, response_model=StandardTokenResponse, responses=_ERRORS
    )
    async def standard_token(
        request: Request,
        response: Response,
        body: StandardTokenRequest,
        avatar_id: Annotated[
            AvatarId | None, Query(description="Avatar, if not in the body")
        ] = None,
    ) -> StandardTokenResponse:
        """LiveKit's standard token endpoint (endpoint token generation)."""
        chosen = body.avatar_id or avatar_id
        if chosen is None:
            raise ApiError(422, "invalid_request", "avatar_id is required", field="avatar_id")
        session = SessionRequest(
            avatar_id=chosen,
            room=body.room_name,
            name=body.participant_name,
            identity=body.participant_identity,
            metadata=body.participant_metadata,
            attributes=body.participant_attributes,
            agents=room_config_agents(body.room_config),
            room_field="room_name",
        )
        issued, headers = await issue(request, session)
        response.headers.update(headers)
        return StandardTokenResponse(server_url=server_url, participant_token=issued.token)

    return router
