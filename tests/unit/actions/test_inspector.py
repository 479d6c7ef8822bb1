"""The inspector's memory is bounded, and only an API key of the policy gets in."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from avatar_actions.inspector import MAX_STREAMS, Inspector, RoomLog, trace_id_of
from avatar_shared.events import PlayoutStarted
from avatar_shared.web.auth import Authenticator, AuthSettings, hash_api_key
from avatar_shared.web.errors import install_error_handlers
from avatar_shared.web.policy import Policy, Rule

KEY = "inspector-test-key-0123456789"
SCOPED_KEY = "inspector-scoped-key-0123456789"


def entry(room: str, n: int, kind: str = "agent_state") -> dict[str, object]:
    return {"room": room, "type": kind, "ts": f"2026-11-30T12:00:{n % 60:02d}+00:00"}


def test_history_is_bounded_per_room_and_in_rooms() -> None:
    log = RoomLog(per_room=3, max_rooms=2)
    for n in range(10):
        log.add(entry("a", n))
    assert len(log.history("a")) == 3
    log.add(entry("b", 1))
    log.add(entry("c", 1))  # "a" is the least recently active: it goes
    assert [r["room"] for r in log.rooms()] == ["c", "b"]
    assert log.history("a") == []


def test_a_room_is_ended_until_its_next_session_starts() -> None:
    log = RoomLog()
    log.add(entry("a", 1, "session_started"))
    log.add(entry("a", 2))
    assert log.rooms()[0]["ended"] is False
    log.add(entry("a", 3, "session_ended"))
    log.add(entry("a", 4, "action_decision"))  # a late decision: still ended
    assert log.rooms()[0]["ended"] is True
    log.add(entry("a", 5, "session_started"))  # a room the caller named, used again
    assert log.rooms()[0]["ended"] is False


def test_a_slow_listener_loses_its_oldest_never_blocks() -> None:
    log = RoomLog()
    queue = log.listen("a")
    for n in range(1500):
        log.add(entry("a", n))
    assert queue.qsize() == 1000
    log.leave("a", queue)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "0af7651916cd43dd8448eb211c80319c",
        ),
        ("00-00000000000000000000000000000000-b7ad6b7169203331-01", None),
        ("garbage", None),
        # not hex: it would be put into the trace UI's link as it is
        ("00-0af7651916cd43dd/../../evil?x=12-b7ad6b7169203331-01", None),
        ("00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01", None),
    ],
)
def test_trace_ids_come_from_traceparent(header: str, expected: str | None) -> None:
    assert trace_id_of({"traceparent": header}) == expected


@pytest.mark.parametrize(
    ("callers_anonymous", "anonymous", "headers", "status"),
    [
        (False, False, {}, 401),  # nobody: no key
        (False, False, {"X-API-Key": "wrong"}, 401),
        (False, False, {"X-API-Key": KEY}, 200),
        (True, False, {}, 403),  # anonymous token callers are not inspector users
        (True, True, {}, 200),  # development mode only (refused otherwise at start)
        (False, True, {}, 200),
    ],
)
async def test_only_an_api_key_of_the_policy_gets_in(
    callers_anonymous: bool, anonymous: bool, headers: dict[str, str], status: int
) -> None:
    auth = AuthSettings(policy_file="p.toml", anonymous=callers_anonymous)  # type: ignore[call-arg]
    authenticator = Authenticator(auth, {"operator": hash_api_key(KEY)})
    policy = Policy(rules=[Rule(principals=["api_key:operator"], avatars=["*"])])
    inspector = Inspector(None, authenticator, policy, anonymous=anonymous)  # type: ignore[arg-type]
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(inspector.router())
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as client:
        answer = await client.get("/inspector/api/rooms", headers=headers)
        assert answer.status_code == status, answer.text
        page = await client.get("/inspector")
        assert page.status_code == 200  # the page itself holds no data
        assert '"keyNeeded": ' + ("false" if anonymous else "true") in page.text


async def test_what_is_not_an_event_is_skipped_and_the_view_goes_on() -> None:
    authenticator = Authenticator(AuthSettings(policy_file="p.toml"), {})  # type: ignore[call-arg]
    log = RoomLog()
    inspector = Inspector(None, authenticator, Policy(), log=log)  # type: ignore[arg-type]
    await inspector._seen(b"{not json", None)  # the core subscription's handler
    await inspector._seen(b'{"type": "agent_state", "seq": ' + b"9" * 5000 + b"}", None)
    await inspector._seen(PlayoutStarted(room="r", speech_id="s", seq=0).to_json(), None)
    assert [e["type"] for e in log.history("r")] == ["playout_started"]


def scoped_inspector(log: RoomLog) -> Inspector:
    """An operator key for every avatar, and a key for the avatar "demo" only."""
    auth = AuthSettings(policy_file="p.toml")  # type: ignore[call-arg]
    keys = {"operator": hash_api_key(KEY), "scoped": hash_api_key(SCOPED_KEY)}
    policy = Policy(
        rules=[
            Rule(principals=["api_key:operator"], avatars=["*"]),
            Rule(principals=["api_key:scoped"], avatars=["demo"]),
        ]
    )
    return Inspector(None, Authenticator(auth, keys), policy, log=log)  # type: ignore[arg-type]


def with_avatar(
    room: str, n: int, avatar: str | None, kind: str = "agent_state"
) -> dict[str, object]:
    return {**entry(room, n, kind), "avatar_id": avatar}


async def test_a_key_sees_only_the_rooms_of_avatars_its_rules_allow() -> None:
    log = RoomLog()
    log.add(with_avatar("mine", 1, "demo"))
    log.add(with_avatar("theirs", 2, "other"))
    log.add(with_avatar("unknown", 3, None))  # no event has named its avatar yet
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(scoped_inspector(log).router())
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as client:

        async def listed(key: str) -> list[str]:
            answer = await client.get("/inspector/api/rooms", headers={"X-API-Key": key})
            assert answer.status_code == 200, answer.text
            return sorted(r["room"] for r in answer.json()["rooms"])

        assert await listed(KEY) == ["mine", "theirs", "unknown"]
        assert await listed(SCOPED_KEY) == ["mine"]
        for room in ("theirs", "unknown", "never-seen"):  # alike: existence is not told
            answer = await client.get(
                f"/inspector/api/rooms/{room}/events", headers={"X-API-Key": SCOPED_KEY}
            )
            assert answer.status_code == 404, room
            assert answer.json()["error"] == "not_found"
        log.add(with_avatar("theirs", 4, "demo", "session_started"))  # the room used again
        assert await listed(SCOPED_KEY) == ["mine", "theirs"]  # its latest avatar decides


async def test_a_room_used_again_for_another_avatar_streams_only_what_the_key_may_see() -> None:
    log = RoomLog()
    log.add(with_avatar("named", 1, "other", "session_started"))
    log.add(with_avatar("named", 2, "other", "session_ended"))
    log.add(with_avatar("named", 3, "demo", "session_started"))
    inspector = scoped_inspector(log)
    sees_demo = lambda avatar: avatar == "demo"  # noqa: E731 (what the scoped key sees)
    stream = inspector._stream("named", sees_demo)
    first = await anext(stream)
    assert b'"avatar_id":"demo"' in first
    log.add(with_avatar("named", 4, "other", "agent_state"))  # not the key's: skipped
    log.add(with_avatar("named", 5, "demo", "agent_state"))
    following = await anext(stream)
    assert b'"ts":"2026-11-30T12:00:05+00:00"' in following
    await stream.aclose()


async def test_live_streams_are_capped_so_the_probes_still_get_in() -> None:
    log = RoomLog()
    log.add(with_avatar("mine", 1, "demo"))
    inspector = scoped_inspector(log)
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(inspector.router())
    open_streams = [inspector._stream("mine", lambda avatar: True) for _ in range(MAX_STREAMS)]
    for stream in open_streams:
        await anext(stream)  # each registered as a listener, like an open browser tab
    assert log.listening() == MAX_STREAMS
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as client:
        answer = await client.get("/inspector/api/rooms/mine/events", headers={"X-API-Key": KEY})
    assert answer.status_code == 503
    assert answer.json()["error"] == "busy"
    assert answer.headers["retry-after"] == "5"
    for stream in open_streams:
        await stream.aclose()  # a closed tab frees its place
    assert log.listening() == 0
