"""Policy decisions, without HTTP."""

import pytest

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
    assert session.dispatch_metadata == '{"avatar_id":"demo-avatar"}'
    assert session.identity == "anon-1"
    assert session.ttl_seconds == 120
    assert session.can_publish_sources == ("microphone",)


def test_api_key_identity_is_derived_unless_the_rule_lets_the_caller_name_it() -> None:
    derived = decide(policy, backend, SessionRequest("x"))
    assert derived.identity.startswith("web-backend-")
    named = decide(policy, backend, SessionRequest("x", identity="customer-1"))
    assert named.identity == "customer-1"


def test_users_may_repeat_their_own_identity_but_not_another() -> None:
    user = Principal("user", "alice")
    assert decide(policy, user, SessionRequest("ava-1", identity="alice")).identity == "alice"
    with pytest.raises(ApiError) as refused:
        decide(policy, user, SessionRequest("ava-1", identity="bob"))
    assert (refused.value.status, refused.value.body.field) == (403, "participant_identity")


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
