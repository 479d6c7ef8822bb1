"""Which slots each quota counts (the counting itself runs on NATS: integration tests)."""

from __future__ import annotations

from dataclasses import replace

from avatar_token.ledger import principal_key, quota_filters, slot_subject
from avatar_token.sessions import DEFAULT_LIFECYCLE, Session

SESSION = Session(
    avatar_id="ava",
    room="a room.with*odd>chars",
    identity="i",
    name=None,
    ttl_seconds=60,
    can_publish_data=True,
    can_publish_sources=("microphone",),
    agent_name="avatar-agent",
    dispatch_metadata="{}",
    principal="user:someone@example.com",
)


def test_only_the_quotas_the_policy_sets_are_counted() -> None:
    assert quota_filters(SESSION) == []
    capped = replace(
        SESSION,
        lifecycle=replace(
            DEFAULT_LIFECYCLE,
            max_sessions=9,
            max_sessions_per_principal=2,
            max_sessions_per_avatar=5,
        ),
    )
    key = principal_key("user:someone@example.com")
    assert quota_filters(capped) == [
        ("deployment", 9, "avatars.sessions.v1.*.*.*"),
        ("principal", 2, f"avatars.sessions.v1.*.{key}.*"),
        ("avatar", 5, "avatars.sessions.v1.*.*.ava"),
    ]


def test_a_slot_subject_is_one_token_per_part_whatever_the_names() -> None:
    subject = slot_subject("a room.with*odd>chars", "user:x.y*z>", "ava")
    parts = subject.split(".")
    assert parts[:3] == ["avatars", "sessions", "v1"]
    assert len(parts) == 6
    assert not any(c in "".join(parts[3:5]) for c in "*> ")
    assert principal_key("user:a") != principal_key("user:b")
