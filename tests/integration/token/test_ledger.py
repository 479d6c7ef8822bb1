"""The session ledger on real NATS with the token identity: each quota counts what it
should (the deployment, a principal, an avatar), and nothing else."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from nats.js.errors import NotFoundError

from avatar_shared.bus import Bus
from avatar_shared.events import SessionEnded, SessionStarted
from avatar_shared.web.errors import ApiError
from avatar_token.ledger import SessionLedger
from avatar_token.sessions import DEFAULT_LIFECYCLE, Session
from tests.support.nats_server import NatsServer


@pytest.fixture
async def ledger(nats_server: NatsServer, bus: Bus) -> AsyncIterator[SessionLedger]:
    with contextlib.suppress(NotFoundError):
        await bus.purge_stream("AVATAR_SESSIONS")
    own = await Bus.connect(nats_server.settings("token"), name="ledger-test", identity="token")
    ledger = SessionLedger(own, start_window_seconds=30)
    await ledger.provision()
    yield ledger
    await own.close()


def session(n: int, principal: str, avatar: str, **quotas: int) -> Session:
    return Session(
        avatar_id=avatar,
        room=f"room-{n} with spaces.and*dots",
        identity=f"id-{n}",
        name=None,
        ttl_seconds=60,
        can_publish_data=True,
        can_publish_sources=("microphone",),
        agent_name="avatar-agent",
        dispatch_metadata="{}",
        principal=principal,
        lifecycle=replace(DEFAULT_LIFECYCLE, **quotas) if quotas else DEFAULT_LIFECYCLE,
    )


async def refused(ledger: SessionLedger, s: Session) -> str | None:
    try:
        await ledger.admit(s)
    except ApiError as exc:
        return f"{exc.status} {exc.body.message}"
    return None


@pytest.mark.parametrize(
    ("quota", "same", "other"),
    [
        # (limit, who shares it, who does not)
        ("max_sessions_per_avatar", ("user:b", "ava"), ("user:c", "bob")),
        ("max_sessions_per_principal", ("user:a", "bob"), ("user:c", "ava")),
    ],
)
async def test_a_quota_counts_only_what_it_names(
    ledger: SessionLedger, quota: str, same: tuple[str, str], other: tuple[str, str]
) -> None:
    limits = {quota: 2}
    assert await refused(ledger, session(1, "user:a", "ava", **limits)) is None
    assert await refused(ledger, session(2, *same, **limits)) is None
    assert await refused(ledger, session(3, *other, **limits)) is None  # another count
    message = await refused(ledger, session(4, "user:a", "ava", **limits))
    assert message is not None
    assert message.startswith("429 ")
    assert quota.removeprefix("max_sessions_per_") in message


async def test_the_deployment_cap_counts_everyone(ledger: SessionLedger) -> None:
    assert await refused(ledger, session(1, "user:a", "ava", max_sessions=2)) is None
    assert await refused(ledger, session(2, "user:b", "bob", max_sessions=2)) is None
    assert await refused(ledger, session(3, "user:c", "cat", max_sessions=2)) is not None


async def test_without_quotas_nothing_is_counted_or_refused(ledger: SessionLedger) -> None:
    for n in range(5):
        assert await refused(ledger, session(n, "user:a", "ava")) is None


async def test_a_ledger_without_nats_refuses_with_503_in_bounded_time(
    nats_server: NatsServer,
) -> None:
    own = await Bus.connect(nats_server.settings("token"), name="ledger-test", identity="token")
    ledger = SessionLedger(own, timeout=0.5)
    await own.close()
    with pytest.raises(ApiError) as err:
        await ledger.admit(session(1, "user:a", "ava", max_sessions=5))
    assert err.value.status == 503
    assert err.value.body.error == "quota_unavailable"
    await ledger.admit(session(2, "user:a", "ava"))  # no quota: NATS is not even asked


def started(s: Session) -> SessionStarted:
    return SessionStarted(room=s.room, seq=0, agent_name="avatar-agent", avatar_id=s.avatar_id)


def ended(s: Session) -> SessionEnded:
    return SessionEnded(room=s.room, seq=1, reason="user_left", avatar_id=s.avatar_id)


async def test_a_second_session_from_the_same_token_is_counted(ledger: SessionLedger) -> None:
    """A room the caller named may hold one session after another; a token whose session
    ended may start the next one there, and that one holds a slot like the first."""
    limit = {"max_sessions_per_principal": 2}
    first = session(1, "user:a", "ava", **limit)
    assert await refused(ledger, first) is None
    await ledger.started(started(first))
    await ledger.ended(ended(first))
    assert await refused(ledger, session(2, "user:a", "ava", **limit)) is None
    await ledger.started(started(first))  # the first token, used again in its room
    message = await refused(ledger, session(3, "user:a", "ava", **limit))
    assert message is not None
    assert message.startswith("429 ")
    assert await refused(ledger, session(4, "user:b", "ava", **limit)) is None


async def test_a_session_ending_frees_its_own_slot_only(ledger: SessionLedger) -> None:
    """Another caller's token for the same room, not started yet, keeps its slot."""
    limit = {"max_sessions_per_principal": 1}
    mine = session(1, "user:a", "ava", **limit)
    theirs = replace(session(1, "user:b", "ava", **limit), identity="id-b")  # same room
    assert await refused(ledger, mine) is None
    await ledger.started(started(mine))
    assert await refused(ledger, theirs) is None
    await ledger.ended(ended(mine))
    assert await refused(ledger, session(2, "user:a", "ava", **limit)) is None
    assert await refused(ledger, session(3, "user:b", "ava", **limit)) is not None


async def test_an_ended_sessions_record_counts_in_no_quota(ledger: SessionLedger) -> None:
    quotas = {"max_sessions": 1, "max_sessions_per_avatar": 1, "max_sessions_per_principal": 1}
    first = session(1, "user:a", "ava", **quotas)
    assert await refused(ledger, first) is None
    await ledger.started(started(first))
    assert await refused(ledger, session(2, "user:a", "ava", **quotas)) is not None
    await ledger.ended(ended(first))
    assert await refused(ledger, session(2, "user:a", "ava", **quotas)) is None


async def test_a_session_end_applied_before_its_start_still_frees_the_slot(
    ledger: SessionLedger,
) -> None:
    first = session(1, "user:a", "ava", max_sessions_per_principal=1)
    assert await refused(ledger, first) is None
    await ledger.ended(ended(first))  # its session_started is not applied yet
    assert await refused(ledger, session(2, "user:a", "ava", max_sessions_per_principal=1)) is None


async def test_a_late_end_does_not_free_the_next_sessions_slot(ledger: SessionLedger) -> None:
    """The two follow separate consumers: the next session's start may be applied first."""
    limit = {"max_sessions_per_principal": 1}
    first = session(1, "user:a", "ava", **limit)
    assert await refused(ledger, first) is None
    await ledger.started(started(first))
    late_end = ended(first)
    await ledger.started(started(first))  # the next session in the room, after that end
    await ledger.ended(late_end)
    assert await refused(ledger, session(2, "user:a", "ava", **limit)) is not None
