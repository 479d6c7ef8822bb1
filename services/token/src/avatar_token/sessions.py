"""Policy applied to one token request: the decision of what the token may do.

Pure: the principal, the policy and the request in; a :class:`Session` or an
:class:`~avatar_shared.web.errors.ApiError` (403 naming the field) out. Invariants:

- identity comes from the principal and is unique per session (``<id>-<12 hex>``), so a
  second session of one user cannot push the first out of a room; a rule with
  ``stable_identity`` keeps users at their bare identity, and one with ``client_identity``
  lets API-key callers name it;
- no identity starts with ``agent-`` (livekit-agents' identities: a caller must not pose
  as the agent), and no attribute is in LiveKit's ``lk.`` namespace (``lk.agent.state``);
- the room is fresh and server-generated unless the rule allows a matching custom room
  (dispatch through a token is ignored by LiveKit for a room that already exists), and a
  custom room never takes a name from the generated namespace (``<room_prefix>-``);
- the TTL is the rule's, capped by the policy's maximum;
- grants are least privilege: join this one room, publish only the rule's track sources;
- every token dispatches the configured agent with the avatar id and the session's limits
  (maximum length, user inactivity timeout) in its metadata; the agent enforces them;
- the room closes soon after it is left (``departure_timeout``) or if nobody joins it
  (``empty_timeout``, the inactivity timeout), and a generated room admits the user and
  the agent only (``max_participants`` 2).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from avatar_shared.web.errors import ApiError
from avatar_shared.web.policy import Lifecycle, Policy, Rule, pattern_matches
from avatar_shared.web.principal import Principal

T = TypeVar("T")

#: livekit-agents names its participants ``agent-<job id>``.
AGENT_IDENTITY_PREFIX = "agent-"
#: Participant attributes LiveKit and livekit-agents set (``lk.agent.state``, ...).
RESERVED_ATTRIBUTE_PREFIX = "lk."
#: Seconds a room stays open after its last participant left (a reconnect resumes it).
DEPARTURE_TIMEOUT_SECONDS = 10
#: A generated room's participants: the user and the agent.
GENERATED_ROOM_PARTICIPANTS = 2
#: A policy's lifecycle when nothing in it says otherwise.
DEFAULT_LIFECYCLE = Policy().lifecycle(Rule(principals=["anonymous"], avatars=["*"]))


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
    principal: str = ""  # who asked (``api_key:<name>``, ``user:<id>``, ``anonymous``)
    lifecycle: Lifecycle = DEFAULT_LIFECYCLE
    max_participants: int = 0  # 0: LiveKit's default (no cap)

    @property
    def room_limits(self) -> tuple[int, int, int]:
        """``empty_timeout``, ``departure_timeout`` and ``max_participants`` of the room."""
        empty = self.lifecycle.inactivity_timeout_seconds
        return empty, DEPARTURE_TIMEOUT_SECONDS, self.max_participants


def forbidden(field_name: str, message: str) -> ApiError:
    return ApiError(403, "forbidden_field", message, field=field_name)


def new_room(prefix: str, avatar_id: str) -> str:
    return f"{prefix}-{avatar_id}-{secrets.token_hex(8)}"[:128]


def session_identity(base: str) -> str:
    return f"{base}-{secrets.token_hex(6)}"


def decide(
    policy: Policy,
    principal: Principal,
    request: SessionRequest,
    *,
    start_by: int | None = None,
    make_room: Callable[[str, str], str] = new_room,
) -> Session:
    """``start_by`` (Unix seconds) goes into the dispatch: the agent starts no session in
    a room created after it (a token used again once its session ended, or late); and,
    for a generated room, ``single_session``: none after the room's session ended."""
    rule = policy.rule_for(principal, request.avatar_id)
    if rule is None:
        raise ApiError(403, "forbidden_avatar", "not allowed to use this avatar", field="avatar_id")
    lifecycle = policy.lifecycle(rule)
    dispatch: dict[str, str | int | bool] = {
        "avatar_id": request.avatar_id,
        "max_session_seconds": lifecycle.max_session_seconds,
        "inactivity_timeout_seconds": lifecycle.inactivity_timeout_seconds,
    }
    if start_by is not None:
        dispatch["start_by"] = start_by
    if request.room is None:  # a room of its own: one session, not one per rejoin
        dispatch["single_session"] = True
    return Session(
        avatar_id=request.avatar_id,
        room=_room(policy, rule, request, make_room),
        identity=_identity(principal, rule, request),
        name=request.name,
        ttl_seconds=policy.ttl_seconds(rule),
        can_publish_data=rule.can_publish_data,
        can_publish_sources=tuple(rule.can_publish_sources),
        agent_name=_agent(policy, request),
        dispatch_metadata=json.dumps(dispatch, separators=(",", ":")),
        metadata=_client_metadata(rule, "participant_metadata", request.metadata),
        attributes=_attributes(rule, request.attributes),
        principal=principal.ref,
        lifecycle=lifecycle,
        max_participants=GENERATED_ROOM_PARTICIPANTS if request.room is None else 0,
    )


def _room(
    policy: Policy, rule: Rule, request: SessionRequest, make_room: Callable[[str, str], str]
) -> str:
    if request.room is None:
        return make_room(policy.defaults.room_prefix, request.avatar_id)
    if not rule.custom_rooms:
        raise forbidden(request.room_field, "choosing the room is not allowed")
    generated = f"{policy.defaults.room_prefix}-"
    if request.room.lower().startswith(generated):
        raise forbidden(request.room_field, f"rooms named '{generated}...' are generated for you")
    if not pattern_matches(rule.room_pattern, request.room):
        raise forbidden(request.room_field, "room name is not allowed by the policy")
    return request.room


def _identity(principal: Principal, rule: Rule, request: SessionRequest) -> str:
    asked = request.identity
    if asked is None:
        identity = _derived_identity(principal, rule)
    elif (principal.kind == "api_key" and rule.client_identity) or (
        principal.kind == "user" and rule.stable_identity and asked == principal.id
    ):
        identity = asked
    else:
        raise forbidden("participant_identity", "the identity comes from your credentials")
    if identity.lower().startswith(AGENT_IDENTITY_PREFIX):
        raise forbidden("participant_identity", f"'{AGENT_IDENTITY_PREFIX}' names agents only")
    return identity


def _derived_identity(principal: Principal, rule: Rule) -> str:
    if principal.kind == "user" and rule.stable_identity:
        return principal.id
    if principal.kind == "anonymous":
        return principal.id  # already fresh per request
    return session_identity(principal.id)


def _agent(policy: Policy, request: SessionRequest) -> str:
    for agent in request.agents:
        if agent.get("agent_name", policy.defaults.agent_name) != policy.defaults.agent_name:
            raise forbidden("room_config.agents.agent_name", "only the configured agent")
        if agent.get("metadata"):
            raise forbidden("room_config.agents.metadata", "dispatch metadata is set by the server")
    return policy.defaults.agent_name


def _attributes(rule: Rule, attributes: dict[str, str] | None) -> dict[str, str] | None:
    attributes = _client_metadata(rule, "participant_attributes", attributes)
    for key in attributes or {}:
        if key.lower().startswith(RESERVED_ATTRIBUTE_PREFIX):
            raise forbidden(
                "participant_attributes",
                f"attributes starting with '{RESERVED_ATTRIBUTE_PREFIX}' are LiveKit's",
            )
    return attributes


def _client_metadata(rule: Rule, field_name: str, value: T | None) -> T | None:
    if value is not None and not rule.client_metadata:
        raise forbidden(field_name, f"setting {field_name} is not allowed")
    return value
