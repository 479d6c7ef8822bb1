"""Policy decisions, without HTTP."""

import json
import re
import time

import pytest
from pydantic import ValidationError

from avatar_shared.web.errors import ApiError
from avatar_shared.web.policy import Policy
from avatar_shared.web.principal import Principal
from avatar_token.sessions import SessionRequest, decide
from tests.unit.token.conftest import POLICY

policy = Policy.model_validate(POLICY)
anonymous = Principal("anonymous", "anon-1")
backend = Principal("api_key", "web-backend")


def fixed_room(prefix: str, avatar_id: str) -> str:
    return f"{prefix}-{avatar_id}-fixed"


def test_server_generates_the_room_and_dispatches_the_agent() -> None:
    session = decide(policy, anonymous, SessionRequest("demo-avatar"), make_room=fixed_room)
    assert session.room == "avatar-demo-avatar-fixed"
    assert session.agent_name == "avatar-agent"
    assert json.loads(session.dispatch_metadata) == {
        "avatar_id": "demo-avatar",
        "max_session_seconds": 1800,
        "inactivity_timeout_seconds": 300,
        "single_session": True,
    }
    assert session.room_limits == (300, 10, 2)
    assert session.identity == "anon-1"
    assert session.ttl_seconds == 120
    assert session.can_publish_sources == ("microphone",)


def test_api_key_identity_is_derived_unless_the_rule_lets_the_caller_name_it() -> None:
    derived = decide(policy, backend, SessionRequest("x"))
    assert derived.identity.startswith("web-backend-")
    named = decide(policy, backend, SessionRequest("x", identity="customer-1"))
    assert named.identity == "customer-1"


def test_user_identities_are_unique_per_session() -> None:
    user = Principal("user", "alice")
    first = decide(policy, user, SessionRequest("ava-1")).identity
    second = decide(policy, user, SessionRequest("ava-1")).identity
    assert first != second
    assert re.fullmatch(r"alice-[0-9a-f]{12}", first)
    with pytest.raises(ApiError) as refused:  # not even their bare identity
        decide(policy, user, SessionRequest("ava-1", identity="alice"))
    assert (refused.value.status, refused.value.body.field) == (403, "participant_identity")


def test_a_stable_identity_rule_keeps_users_at_their_own_identity_only() -> None:
    stable = Policy.model_validate(
        {"rules": [{"principals": ["user:*"], "avatars": ["*"], "stable_identity": True}]}
    )
    user = Principal("user", "alice")
    assert decide(stable, user, SessionRequest("ava-1")).identity == "alice"
    assert decide(stable, user, SessionRequest("ava-1", identity="alice")).identity == "alice"
    with pytest.raises(ApiError) as refused:
        decide(stable, user, SessionRequest("ava-1", identity="bob"))
    assert (refused.value.status, refused.value.body.field) == (403, "participant_identity")
    # an API key is shared by many people: it never gets one stable identity
    keyed = Policy.model_validate(
        {"rules": [{"principals": ["api_key:k"], "avatars": ["*"], "stable_identity": True}]}
    )
    assert decide(keyed, Principal("api_key", "k"), SessionRequest("x")).identity != "k"


@pytest.mark.parametrize("identity", ["agent-avatar-agent", "agent-AJ_1234", "Agent-x"])
def test_nobody_may_take_an_agents_identity(identity: str) -> None:
    with pytest.raises(ApiError) as refused:
        decide(policy, backend, SessionRequest("x", identity=identity))
    assert (refused.value.status, refused.value.body.field) == (403, "participant_identity")
    with pytest.raises(ApiError):  # nor be given one by their credentials
        decide(policy, Principal("user", "agent-smith"), SessionRequest("ava-1"))


@pytest.mark.parametrize("key", ["lk.agent.state", "LK.publish_on_behalf", "lk.x"])
def test_livekits_attribute_namespace_is_reserved(key: str) -> None:
    with pytest.raises(ApiError) as refused:
        decide(policy, backend, SessionRequest("x", attributes={key: "speaking"}))
    assert (refused.value.status, refused.value.body.field) == (403, "participant_attributes")
    allowed = decide(policy, backend, SessionRequest("x", attributes={"plk.x": "1"}))
    assert allowed.attributes == {"plk.x": "1"}


def test_custom_rooms_stay_out_of_the_generated_namespace() -> None:
    open_rooms = Policy.model_validate(
        {"rules": [{"principals": ["anonymous"], "avatars": ["*"], "custom_rooms": True}]}
    )
    generated = decide(open_rooms, anonymous, SessionRequest("demo-avatar")).room
    for room in (generated, generated.upper(), "avatar-anything"):
        with pytest.raises(ApiError) as refused:
            decide(open_rooms, anonymous, SessionRequest("demo-avatar", room=room))
        assert (refused.value.status, refused.value.body.field) == (403, "room")
    shared = decide(open_rooms, anonymous, SessionRequest("d", room="team-room"))
    assert shared.room == "team-room"
    # a named room may hold one session after another: no single_session
    assert "single_session" not in json.loads(shared.dispatch_metadata)


def test_a_backtracking_room_pattern_costs_no_more_than_any_other() -> None:
    # ^(a+)+$ makes Python's re take seconds for 26 characters; the policy's patterns run
    # on a linear-time engine, so a 128-character name is answered at once.
    careless = Policy.model_validate(
        {
            "rules": [
                {
                    "principals": ["anonymous"],
                    "avatars": ["*"],
                    "custom_rooms": True,
                    "room_pattern": "^(a+)+$",
                }
            ]
        }
    )
    started = time.monotonic()
    with pytest.raises(ApiError) as refused:
        decide(careless, anonymous, SessionRequest("d", room="a" * 127 + "-"))
    assert time.monotonic() - started < 0.5
    assert refused.value.status == 403
    assert decide(careless, anonymous, SessionRequest("d", room="a" * 128)).room == "a" * 128


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (SessionRequest("demo-avatar", room="mine"), "room"),
        (SessionRequest("demo-avatar", room="mine", room_field="room_name"), "room_name"),
        (SessionRequest("demo-avatar", metadata="{}"), "participant_metadata"),
        (SessionRequest("demo-avatar", attributes={"a": "b"}), "participant_attributes"),
        (
            SessionRequest("demo-avatar", agents=[{"agent_name": "x"}]),
            "room_config.agents.agent_name",
        ),
        (SessionRequest("private"), "avatar_id"),
    ],
)
def test_refusals_name_the_field(request_: SessionRequest, field: str) -> None:
    with pytest.raises(ApiError) as refused:
        decide(policy, anonymous, request_)
    assert refused.value.status == 403
    assert refused.value.body.field == field


def test_a_rule_sets_its_own_session_limits_and_the_defaults_fill_the_rest() -> None:
    strict = Policy.model_validate(
        {
            "defaults": {"max_session_seconds": 600, "max_sessions": 50},
            "rules": [
                {
                    "principals": ["anonymous"],
                    "avatars": ["*"],
                    "max_session_seconds": 180,
                    "inactivity_timeout_seconds": 45,
                    "max_sessions_per_principal": 2,
                },
                {"principals": ["api_key:web-backend"], "avatars": ["*"], "custom_rooms": True},
            ],
        }
    )
    session = decide(strict, anonymous, SessionRequest("demo-avatar"))
    assert session.principal == "anonymous"
    assert (
        session.lifecycle.max_session_seconds,
        session.lifecycle.inactivity_timeout_seconds,
    ) == (
        180,
        45,
    )
    assert session.lifecycle.max_sessions_per_principal == 2
    assert session.lifecycle.max_sessions == 50
    assert json.loads(session.dispatch_metadata)["max_session_seconds"] == 180
    assert session.room_limits == (45, 10, 2)
    other = decide(strict, backend, SessionRequest("demo-avatar", room="shared-room"))
    assert other.principal == "api_key:web-backend"
    assert other.lifecycle.max_session_seconds == 600
    assert other.lifecycle.max_sessions_per_principal is None
    assert other.room_limits == (300, 10, 0)  # a room the caller names may be shared


@pytest.mark.parametrize(
    "rule",
    [
        {"max_session_seconds": 10},  # shorter than any conversation
        {"max_session_seconds": 86_401},
        {"inactivity_timeout_seconds": 5},
        {"max_sessions_per_principal": 0},
        {"max_sessions_per_avatar": -1},
        {"max_sessions": 3},  # deployment-wide: [defaults] only
    ],
)
def test_session_limits_out_of_bounds_are_refused(rule: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Policy.model_validate({"rules": [{"principals": ["anonymous"], "avatars": ["*"], **rule}]})
