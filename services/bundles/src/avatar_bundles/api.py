"""HTTP route of the bundle service: the same path and body as ZeroWeight's public API.

``GET /api/avatars/bundle/{avatar_id}`` -> ``200 {"payload": "..."}`` with a strong
``ETag`` and ``Cache-Control: private, max-age=N`` (private: access is per caller);
``If-None-Match`` with a current tag -> ``304``. Callers are limited per address and per
caller, authenticated and checked against the access policy exactly as by the token
service; every answer says how many requests the caller has left.
"""

from __future__ import annotations

import math
from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from pydantic import BaseModel
from starlette.types import Receive, Scope, Send

from avatar_bundles.bundles import BundleService
from avatar_bundles.sources import SourceError
from avatar_shared.web.auth import Authenticator
from avatar_shared.web.clientip import ClientAddress
from avatar_shared.web.errors import ApiError, error_responses
from avatar_shared.web.h11 import WRITE_BUFFER_BYTES
from avatar_shared.web.limits import REMAINING_HEADER, RequestLimits
from avatar_shared.web.policy import Policy

BUNDLE_PATH = "/api/avatars/bundle/{avatar_id}"
CACHE_HEADER = "X-Bundle-Cache"


class BundleBody(BaseModel):
    payload: str


class SlicedResponse(Response):
    """The body sent in slices of :data:`~avatar_shared.web.h11.WRITE_BUFFER_BYTES`, with
    its length declared: a client that stops reading holds one slice of the process's
    memory, not a copy of the whole bundle, until the send deadline cuts it off."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = self.raw_headers
        await send({"type": "http.response.start", "status": self.status_code, "headers": headers})
        body = memoryview(self.body)
        for offset in range(0, max(1, len(body)), WRITE_BUFFER_BYTES):
            end = offset + WRITE_BUFFER_BYTES
            more = end < len(body)
            await send(
                {"type": "http.response.body", "body": bytes(body[offset:end]), "more_body": more}
            )


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or etag in tags


def bundle_router(
    service: BundleService,
    authenticator: Authenticator,
    policy: Policy,
    limits: RequestLimits,
    client_address: ClientAddress,
    max_age: int,
) -> APIRouter:
    router = APIRouter(tags=["bundles"])

    @router.get(
        BUNDLE_PATH,
        response_model=BundleBody,
        responses={
            304: {"description": "Not modified"},
            **error_responses(401, 403, 404, 422, 429, 502, 503),
        },
    )
    async def bundle(
        request: Request,
        avatar_id: Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")],
    ) -> Response:
        """The avatar's runtime bundle, for `LiveKitAvatarSession`'s `getBundle`."""
        remaining = 0
        try:
            remaining = limits.check_address(client_address.of(request))
            principal = await authenticator.authenticate(request.headers)
            remaining = limits.check_caller(principal, remaining)
            if policy.rule_for(principal, avatar_id) is None:
                raise ApiError(
                    403, "forbidden_avatar", "not allowed to use this avatar", field="avatar_id"
                )
            served = await service.get(avatar_id)
        except SourceError as exc:
            headers = {REMAINING_HEADER: str(remaining)}
            if exc.retry_after:
                headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
            raise ApiError(exc.status, exc.error, exc.message, headers=headers) from None
        except ApiError as exc:
            exc.headers.setdefault(REMAINING_HEADER, str(remaining))
            raise
        headers = {
            "ETag": served.bundle.etag,
            "Cache-Control": f"private, max-age={max_age}",
            CACHE_HEADER: served.cache,
            REMAINING_HEADER: str(remaining),
        }
        if _matches(request.headers.get("if-none-match"), served.bundle.etag):
            return Response(status_code=304, headers=headers)
        return SlicedResponse(served.bundle.body, media_type="application/json", headers=headers)

    return router
