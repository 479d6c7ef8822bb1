"""Session limits from the dispatch metadata, and which limit comes next."""

from __future__ import annotations

import json

import pytest

from avatar_agent.lifecycle import (
    INACTIVE,
    MAX_DURATION,
    START_SKEW_SECONDS,
    Lifecycle,
    SessionLimits,
    started_too_late,
)

AGENT = SessionLimits(1800.0, 300.0)


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        (json.dumps({"max_session_seconds": 180, "inactivity_timeout_seconds": 45}), (180, 45)),
        (json.dumps({"max_session_seconds": 180}), (180, 300)),
        ('{"avatar_id": "a"}', (1800, 300)),  # a dispatch without limits
        ("", (1800, 300)),
        ("not json", (1800, 300)),
        ("[180]", (1800, 300)),
        (json.dumps({"max_session_seconds": "180"}), (1800, 300)),
        (json.dumps({"max_session_seconds": True}), (1800, 300)),
        (json.dumps({"max_session_seconds": 0}), (1800, 300)),
        (json.dumps({"max_session_seconds": -5}), (1800, 300)),
        ('{"max_session_seconds": NaN}', (1800, 300)),
        ('{"max_session_seconds": Infinity}', (86_400, 300)),
        (json.dumps({"max_session_seconds": 10**12}), (86_400, 300)),
        (json.dumps({"max_session_seconds": 10**400}), (86_400, 300)),  # past a float
        ('{"max_session_seconds": ' + "9" * 5000 + "}", (1800, 300)),  # past int()'s limit
        ("[" * 100_000 + "]" * 100_000, (1800, 300)),  # deeper than json can go
    ],
)
def test_the_dispatch_sets_the_limits_within_bounds(
    metadata: str, expected: tuple[float, float]
) -> None:
    limits = AGENT.from_metadata(metadata)
    assert (limits.max_session_seconds, limits.inactivity_timeout_seconds) == expected


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


async def never(_: str) -> None:
    raise AssertionError("not in these tests")


def test_inactivity_counts_from_the_last_sign_or_the_end_of_the_agents_turn() -> None:
    clock = Clock()
    lifecycle = Lifecycle(SessionLimits(60.0, 10.0), never, clock=clock)
    assert lifecycle.next_limit() == (110.0, INACTIVE)
    clock.now = 105.0
    lifecycle.user_active()
    assert lifecycle.next_limit() == (115.0, INACTIVE)
    lifecycle.agent_busy(True)  # while the agent thinks or speaks, only the length counts
    assert lifecycle.next_limit() == (160.0, MAX_DURATION)
    clock.now = 140.0
    lifecycle.agent_busy(False)
    assert lifecycle.next_limit() == (150.0, INACTIVE)
    clock.now = 155.0
    lifecycle.user_active()
    assert lifecycle.next_limit() == (160.0, MAX_DURATION)  # the length comes first


@pytest.mark.parametrize(
    ("metadata", "created", "late"),
    [
        # the room was created within the start window: the session, or a successor job
        ('{"avatar_id": "a", "start_by": 1000}', 900.0, False),
        ('{"avatar_id": "a", "start_by": 1000}', 1000.0 + START_SKEW_SECONDS, False),
        # created later: the token was used again after its session ended, or too late
        ('{"avatar_id": "a", "start_by": 1000}', 1000.0 + START_SKEW_SECONDS + 1, True),
        ('{"avatar_id": "a", "start_by": 1000.5}', 5000.0, True),
        # no start_by (the local run, another dispatcher), or not a number: not refused
        ('{"avatar_id": "a"}', 5000.0, False),
        ('{"avatar_id": "a", "start_by": "1000"}', 5000.0, False),
        ('{"avatar_id": "a", "start_by": true}', 5000.0, False),
        # integers past a float: no crash, as far off as they say
        (json.dumps({"avatar_id": "a", "start_by": 10**400}), 5000.0, False),
        (json.dumps({"avatar_id": "a", "start_by": -(10**400)}), 5000.0, True),
        ("not json", 5000.0, False),
    ],
)
def test_no_session_starts_in_a_room_created_after_the_start_window(
    metadata: str, created: float, late: bool
) -> None:
    assert started_too_late(metadata, created) is late
