"""HTTP routes of the token service; the contract itself is in :mod:`avatar_token.protocol`.

Both routes validate their input themselves, inside :meth:`TokenIssuer.issue`, rather than
through FastAPI's parameters: that way the caller's address is charged before the body is
read (and the body is read with a ceiling), and a 4xx for bad input carries
``X-RateLimit-Remaining`` like every other answer. The OpenAPI document still describes
the parameters and the body as FastAPI would (tested).
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from avatar_shared.web.body import read_body
from avatar_shared.web.clientip import ClientAddress
from avatar_shared.web.errors import ApiError, error_responses
from avatar_shared.web.limits import REMAINING_HEADER
from avatar_token.issuer import Issued, TokenIssuer
from avatar_token.protocol import (
    MAX_BODY_BYTES,
    AvatarTokenQuery,
    AvatarTokenResponse,
    StandardTokenQuery,
    StandardTokenRequest,
    StandardTokenResponse,
    room_config_agents,
)
from avatar_token.sessions import SessionRequest

TOKEN_PATH = "/api/livekit/token"  # noqa: S105 (a route, not a password)
_ERRORS = error_responses(400, 401, 403, 422, 429, 503)


def token_router(
    issuer: TokenIssuer, client_address: ClientAddress, server_url: str, body_timeout: float
) -> APIRouter:
    router = APIRouter(tags=["tokens"])

    def headers(issued: Issued) -> dict[str, str]:
        return {REMAINING_HEADER: str(issued.remaining), "Cache-Control": "no-store"}

    @router.get(
        TOKEN_PATH,
        response_model=AvatarTokenResponse,
        responses=_ERRORS,
        openapi_extra={"parameters": AvatarTokenQuery.openapi_parameters()},
    )
    async def avatar_token(request: Request) -> Response:
        """Token for ZeroWeight's `LiveKitAvatarSession` (`getLiveKitToken`)."""

        async def read() -> SessionRequest:
            query = AvatarTokenQuery.parse(request.scope["query_string"])
            return SessionRequest(avatar_id=query.avatar_id, room=query.room, name=query.name)

        issued = await issuer.issue(request.headers, client_address.of(request), read)
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
        return Response(
            body.model_dump_json(), media_type="application/json", headers=headers(issued)
        )

    @router.post(
        TOKEN_PATH,
        status_code=201,
        response_model=StandardTokenResponse,
        responses=error_responses(400, 401, 403, 408, 413, 422, 429, 503),
        openapi_extra={
            "parameters": StandardTokenQuery.openapi_parameters(),
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"$ref": "#/components/schemas/StandardTokenRequest"}
                    }
                },
            },
        },
    )
    async def standard_token(request: Request) -> Response:
        """LiveKit's standard token endpoint (endpoint token generation)."""

        async def read() -> SessionRequest:
            query = StandardTokenQuery.parse(request.scope["query_string"])
            body = StandardTokenRequest.parse(
                await read_body(request, MAX_BODY_BYTES, body_timeout)
            )
            given = {a for a in (body.avatar_id, query.avatar_id) if a is not None}
            if len(given) > 1:  # refused, not resolved, like a parameter given twice
                message = "avatar_id: the query and the body name different avatars"
                raise ApiError(422, "invalid_request", message, field="avatar_id")
            if not given:
                raise ApiError(422, "invalid_request", "avatar_id is required", field="avatar_id")
            (chosen,) = given
            return SessionRequest(
                avatar_id=chosen,
                room=body.room_name,
                name=body.participant_name,
                identity=body.participant_identity,
                metadata=body.participant_metadata,
                attributes=body.participant_attributes,
                agents=room_config_agents(body.room_config),
                room_field="room_name",
            )

        issued = await issuer.issue(request.headers, client_address.of(request), read)
        answer = StandardTokenResponse(server_url=server_url, participant_token=issued.token)
        return Response(
            answer.model_dump_json(),
            status_code=201,
            media_type="application/json",
            headers=headers(issued),
        )

    return router
