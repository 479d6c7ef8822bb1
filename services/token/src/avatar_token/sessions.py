"""Policy applied to one token request: the decision of what the token may do.

Pure: the principal, the policy and the request in; a :class:`Session` or an
:class:`~avatar_shared.web.errors.ApiError` (403 naming the field) out. Invariants:

- identity comes from the principal; a caller names it only where its rule allows;
- the room is fresh and server-generated unless the rule allows a matching custom room
  (dispatch through a token is ignored by LiveKit for a room that already exists);
- the TTL is the rule's, capped by the policy's maximum;
- grants are least privilege: join this one room, publish only the rule's track sources;
- every token dispatches the configured agent with the avatar id in its metadata.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from avatar_shared.web.errors import ApiError
from avatar_shared.web.policy import Policy, Rule
from avatar_shared.web.principal import Principal

T = TypeVar("T")


@dataclass(frozen=True)
class SessionRequest:
    avatar_id: str
    room: str | None = None
    name: str | None = None
    identity: str | None = None
    metadata: str | None = None
    attributes: dict[str, str] | None = None
    agents: list[dict[str, str]] = field(default_factory=list)
    room_field: str = "room"


@dataclass(frozen=True)
class Session:
    avatar_id: str
    room: str
    identity: str
    name: str | None
    ttl_seconds: int
    can_publish_data: bool
    can_publish_sources: tuple[str, ...]
    agent_name: str
    dispatch_metadata: str
    metadata: str | None = None
    attributes: dict[str, str] | None = None


def forbidden(field_name: str, message: str) -> ApiError:
    return ApiError(403, "forbidden_field", message, field=field_name)


def new_room(prefix: str, avatar_id: str) -> str:
    return f"{prefix}-{avatar_id}-{secrets.token_hex(8)}"[:128]


def decide(
    policy: Policy,
    principal: Principal,
    request: SessionRequest,
    *,
    make_room: Callable[[str, str], str] = new_room,
) -> Session:
    rule = policy.rule_for(principal, request.avatar_id)
    if rule is None:
        raise ApiError(403, "forbidden_avatar", "not allowed to use this avatar", field="avatar_id")
    return Session(
        avatar_id=request.avatar_id,
        room=_room(policy, rule, request, make_room),
        identity=_identity(principal, rule, request),
        name=request.name,
        ttl_seconds=policy.ttl_seconds(rule),
        can_publish_data=rule.can_publish_data,
        can_publish_sources=tuple(rule.can_publish_sources),
        agent_name=_agent(policy, request),
        dispatch_metadata=json.dumps({"avatar_id": request.avatar_id}, separators=(",", ":")),
        metadata=_client_metadata(rule, "participant_metadata", request.metadata),
        attributes=_client_metadata(rule, "participant_attributes", request.attributes),
    )


def _room(
    policy: Policy, rule: Rule, request: SessionRequest, make_room: Callable[[str, str], str]
) -> str:
    if request.room is None:
        return make_room(policy.defaults.room_prefix, request.avatar_id)
    if not rule.custom_rooms:
        raise forbidden(request.room_field, "choosing the room is not allowed")
    if not re.fullmatch(rule.room_pattern, request.room):
        raise forbidden(request.room_field, "room name is not allowed by the policy")
    return request.room


def _identity(principal: Principal, rule: Rule, request: SessionRequest) -> str:
    asked = request.identity
    if principal.kind == "api_key":
        derived = f"{principal.id}-{secrets.token_hex(6)}"
        if asked is not None and rule.client_identity:
            return asked
    else:
        derived = principal.id
        if asked == derived:
            return derived
    if asked is not None:
        raise forbidden("participant_identity", "the identity comes from your credentials")
    return derived


def _agent(policy: Policy, request: SessionRequest) -> str:
    for agent in request.agents:
        if agent.get("agent_name", policy.defaults.agent_name) != policy.defaults.agent_name:
            raise forbidden("room_config.agents.agent_name", "only the configured agent")
        if agent.get("metadata"):
            raise forbidden("room_config.agents.metadata", "dispatch metadata is set by the server")
    return policy.defaults.agent_name


def _client_metadata(rule: Rule, field_name: str, value: T | None) -> T | None:
    if value is not None and not rule.client_metadata:
        raise forbidden(field_name, f"setting {field_name} is not allowed")
    return value
