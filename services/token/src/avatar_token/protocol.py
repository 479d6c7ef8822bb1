"""The HTTP contract of the token service, as the frontend and LiveKit SDKs see it.

- ``GET /api/livekit/token?avatar_id=..&name=..[&room=..]``: what ZeroWeight's
  ``LiveKitAvatarSession`` calls through its ``getLiveKitToken`` callback. Its expected
  response shape is unpublished, so :class:`AvatarTokenResponse` carries the usual
  spellings of every value (``token``/``participant_token``/``accessToken``,
  ``server_url``/``serverUrl``/``url``, ``room``/``room_name``/``roomName``, ...).
- ``POST /api/livekit/token``: LiveKit's standard token endpoint ("endpoint token
  generation"), request :class:`StandardTokenRequest`, response 201
  :class:`StandardTokenResponse`. ``avatar_id`` is our one addition (body or query).

A parameter or JSON key given twice is refused (422), not resolved: proxies, firewalls
and frameworks disagree on which copy wins, and a check made in front of this service
must see the value this service uses. For the same reason a query that is not
percent-encoded UTF-8 is refused (400), where frameworks would put U+FFFD in its place
and mint a name the caller never sent.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Self
from urllib.parse import parse_qsl

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
)

from avatar_shared.events import AvatarId
from avatar_shared.web.errors import ApiError, bad_request, invalid_request
from avatar_shared.web.text import has_unsafe_characters

MAX_METADATA_BYTES = 4096
MAX_ATTRIBUTES = 32
#: The most a POST body may hold; everything above fits in a few KiB.
MAX_BODY_BYTES = 64 * 1024


def _display_name(value: str) -> str:
    if has_unsafe_characters(value):
        raise ValueError("must not contain control, line-break or bidirectional characters")
    if not value.strip():
        raise ValueError("must not be blank")
    return value


def _metadata(value: str) -> str:
    if len(value.encode("utf-8")) > MAX_METADATA_BYTES:
        raise ValueError(f"must be at most {MAX_METADATA_BYTES} bytes")
    if has_unsafe_characters(value, multiline=True):
        raise ValueError("must not contain control or bidirectional-override characters")
    return value


def _attributes(value: dict[str, str]) -> dict[str, str]:
    if len(value) > MAX_ATTRIBUTES:
        raise ValueError(f"at most {MAX_ATTRIBUTES} attributes")
    if sum(len(k.encode()) + len(v.encode()) for k, v in value.items()) > MAX_METADATA_BYTES:
        raise ValueError(f"attributes must total at most {MAX_METADATA_BYTES} bytes")
    if any(has_unsafe_characters(v) for v in value.values()):
        raise ValueError("values must not contain control or bidirectional-override characters")
    return value


RoomName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,128}$")]
DisplayName = Annotated[
    str, StringConstraints(min_length=1, max_length=128), AfterValidator(_display_name)
]
Identity = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:@-]{1,128}$")]
Metadata = Annotated[str, AfterValidator(_metadata)]
AttributeKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
Attributes = Annotated[dict[AttributeKey, str], AfterValidator(_attributes)]


class _Query(BaseModel):
    """A route's query, validated by one pydantic call; other parameters are ignored."""

    @classmethod
    def parse(cls, query: bytes) -> Self:
        """``query``: the raw query string (``scope["query_string"]``). Validated, or an
        ApiError: 400 if it is not percent-encoded UTF-8, 422 naming each bad parameter."""
        try:
            params = parse_qsl(query.decode("ascii"), keep_blank_values=True, errors="strict")
        except UnicodeDecodeError:
            raise bad_request("the query is not percent-encoded UTF-8") from None
        values: dict[str, str] = {}
        for name, value in params:
            if name in values and name in cls.model_fields:
                raise given_twice(name)
            values[name] = value
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise invalid_request(exc.errors(include_url=False)) from None

    @classmethod
    def openapi_parameters(cls) -> list[dict[str, Any]]:
        """The OpenAPI ``parameters`` FastAPI would write for these as ``Query`` fields."""
        schema = cls.model_json_schema()
        required = set(schema.get("required", ()))
        return [
            {
                "name": name,
                "in": "query",
                "required": name in required,
                "schema": {k: v for k, v in prop.items() if k != "default"},
                "description": prop["description"],
            }
            for name, prop in schema["properties"].items()
        ]


class AvatarTokenQuery(_Query):
    """The query of ``GET /api/livekit/token``."""

    avatar_id: AvatarId = Field(description="Avatar to talk to")
    name: DisplayName | None = Field(None, description="Display name")
    room: RoomName | None = Field(None, description="Room, where policy allows")


class StandardTokenQuery(_Query):
    """The query of ``POST /api/livekit/token``."""

    avatar_id: AvatarId | None = Field(None, description="Avatar, if not in the body")


class AvatarTokenResponse(BaseModel):
    """Everything a browser needs to join; several spellings of each value on purpose."""

    token: str = Field(description="LiveKit access token (JWT)")
    participant_token: str = Field(description="Same token, LiveKit's spelling")
    accessToken: str = Field(description="Same token, camelCase spelling")
    server_url: str = Field(description="LiveKit URL to connect to")
    serverUrl: str = Field(description="Same URL, camelCase spelling")
    url: str = Field(description="Same URL")
    room: str = Field(description="Room the token admits to")
    room_name: str = Field(description="Same room")
    roomName: str = Field(description="Same room, camelCase spelling")
    identity: str = Field(description="Participant identity in the token (JWT sub)")
    participant_identity: str = Field(description="Same identity")
    participant_name: str | None = Field(description="Display name in the token")
    avatar_id: str
    expires_at: datetime = Field(description="When the token stops admitting joins (UTC)")
    ttl_seconds: int


class AgentDispatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agent_name: str | None = None
    metadata: str | None = None


class RoomConfigRequest(BaseModel):
    """Only agent dispatch may be asked for, and only of the configured agent."""

    model_config = ConfigDict(extra="forbid")

    agents: list[AgentDispatchRequest] | None = Field(None, max_length=1)


class StandardTokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    room_name: RoomName | None = None
    participant_identity: Identity | None = None
    participant_name: DisplayName | None = None
    participant_metadata: Metadata | None = None
    participant_attributes: Attributes | None = None
    room_config: RoomConfigRequest | None = None
    avatar_id: AvatarId | None = Field(None, description="Our addition; or ?avatar_id=")

    @classmethod
    def parse(cls, body: bytes) -> StandardTokenRequest:
        """Validated, or an ApiError: 400 for a body that is not JSON, 422 naming each
        bad field or a key given twice."""
        try:
            request = cls.model_validate_json(body)
        except ValidationError as exc:
            raise invalid_request(exc.errors(include_url=False)) from None
        # The model accepted it, so it is small and shallow: a second parse is cheap.
        json.loads(body, object_pairs_hook=_unique_keys)
        return request


def given_twice(name: str) -> ApiError:
    return ApiError(422, "invalid_request", f"{name}: given more than once", field=name)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise given_twice(key)
        found[key] = value
    return found


class StandardTokenResponse(BaseModel):
    server_url: str
    participant_token: str


def room_config_agents(config: RoomConfigRequest | None) -> list[dict[str, Any]]:
    if config is None or not config.agents:
        return []
    return [a.model_dump(exclude_none=True) for a in config.agents]
