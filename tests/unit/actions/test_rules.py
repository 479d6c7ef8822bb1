"""Each sequencing rule, driven by events and explicit times (docs/actions.md)."""

from __future__ import annotations

import itertools

import pytest

from avatar_actions.rules import (
    MAX_SPEECHES,
    UNREAD,
    Decision,
    RoomSequencer,
    RoomState,
    RulesConfig,
)
from avatar_shared.events import (
    AgentState,
    AgentStateChanged,
    DeliveryDone,
    DeliveryOutcome,
    DropReason,
    Event,
    Outcome,
    PlayoutStarted,
    SessionEnded,
    SessionStarted,
    SpeechCreated,
    SpeechDone,
    TagKind,
    TagParsed,
    UserState,
    UserStateChanged,
)

ROOM = "room-1"
CONFIG = RulesConfig(
    allowed={"speaking", "wave_hand", "nod", "bow", "shrug"},
    debounce=0.2,
    ttl=30.0,
    cap_per_speech=3,
    min_gap=1.0,
)
_seq = itertools.count()


def created(speech: str) -> SpeechCreated:
    return SpeechCreated(
        room=ROOM,
        speech_id=speech,
        seq=next(_seq),
        source_kind="generate_reply",
        user_initiated=False,
    )


def tag(speech: str, name: str, index: int = 0, *, valid: bool = True) -> TagParsed:
    return TagParsed(
        room=ROOM,
        speech_id=speech,
        seq=next(_seq),
        kind=TagKind.ACTION,
        name=name,
        valid=valid,
        index=index,
        char_offset=0,
        word_index=0,
    )


def playout(speech: str) -> PlayoutStarted:
    return PlayoutStarted(room=ROOM, speech_id=speech, seq=next(_seq))


def done(speech: str, *, interrupted: bool = False, failure: str | None = None) -> SpeechDone:
    return SpeechDone(
        room=ROOM, speech_id=speech, seq=next(_seq), interrupted=interrupted, failure=failure
    )


def agent(state: AgentState) -> AgentStateChanged:
    return AgentStateChanged(
        room=ROOM, seq=next(_seq), old_state=AgentState.THINKING, new_state=state
    )


def user(state: UserState) -> UserStateChanged:
    return UserStateChanged(
        room=ROOM, seq=next(_seq), old_state=UserState.LISTENING, new_state=state
    )


def run(seq: RoomSequencer, *steps: tuple[float, Event | None]) -> list[tuple[float, Decision]]:
    """Feed (time, event) steps; None means "tick at this time"."""
    out: list[tuple[float, Decision]] = []
    for now, event in steps:
        decisions = seq.tick(now) if event is None else seq.handle(event, now)
        out += [(now, d) for d in decisions]
    return out


def published(out: list[tuple[float, Decision]]) -> list[tuple[float, str]]:
    return [(t, d.action) for t, d in out if d.outcome is Outcome.PUBLISHED]


def dropped(out: list[tuple[float, Decision]]) -> list[tuple[str, DropReason | None]]:
    return [(d.action, d.reason) for _, d in out if d.outcome is Outcome.DROPPED]


def reply(speech: str, *gestures: str, at: float = 0.0) -> list[tuple[float, Event | None]]:
    """A reply's events up to the end of its playout (agent back to listening at its end)."""
    steps: list[tuple[float, Event | None]] = [
        (at, created(speech)),
        (at, agent(AgentState.SPEAKING)),
    ]
    steps += [(at, tag(speech, g, i)) for i, g in enumerate(gestures)]
    steps += [
        (at + 0.1, playout(speech)),
        (at + 2.0, done(speech)),
        (at + 2.0, agent(AgentState.LISTENING)),
    ]
    return steps


def test_rule1_speaking_is_published_once_when_playout_starts() -> None:
    seq = RoomSequencer(CONFIG)
    start = playout("s1")
    out = run(
        seq, (0, created("s1")), (0, tag("s1", "speaking")), (0.1, start), (0.2, playout("s1"))
    )
    assert published(out) == [(0.1, "speaking")]
    assert out[0][1].cause_id == start.id
    assert out[0][1].speech_id == "s1"
    late = run(seq, (0.3, tag("s1", "speaking", 1)))
    assert dropped(late) == [("speaking", DropReason.DUPLICATE)]


def test_rule2_gestures_wait_for_done_listening_and_the_debounce() -> None:
    seq = RoomSequencer(CONFIG)
    out = run(seq, *reply("s1", "wave_hand"))
    assert published(out) == [(0.1, "speaking")]  # nothing released at done itself
    assert seq.next_deadline() == pytest.approx(2.2)
    assert published(run(seq, (2.19, None))) == []
    assert published(run(seq, (2.2, None))) == [(2.2, "wave_hand")]


def test_rule2_release_waits_while_the_agent_thinks_or_the_user_speaks() -> None:
    seq = RoomSequencer(CONFIG)
    run(seq, *reply("s1", "nod")[:-1])  # done, but the agent never went back to listening
    assert published(run(seq, (3.0, None))) == []
    run(seq, (3.0, agent(AgentState.THINKING)))
    assert published(run(seq, (4.0, None))) == []
    assert published(run(seq, (5.0, agent(AgentState.IDLE)))) == [(5.0, "nod")]


def test_rule2_gestures_go_out_in_tag_order_across_speeches() -> None:
    seq = RoomSequencer(CONFIG)
    steps = [(0.0, created("s1")), (0.0, tag("s1", "bow", 1)), (0.0, tag("s1", "nod", 0))]
    steps += [(0.1, playout("s1")), (1.0, done("s1")), (1.0, agent(AgentState.LISTENING))]
    out = run(seq, *steps, (1.2, None), (2.2, None), (3.2, None))
    assert published(out) == [(0.1, "speaking"), (1.2, "nod"), (2.2, "bow")]


def test_rule3_interrupted_speech_drops_its_gestures() -> None:
    seq = RoomSequencer(CONFIG)
    steps = [(0.0, created("s1")), (0.0, tag("s1", "wave_hand")), (0.1, playout("s1"))]
    out = run(
        seq,
        *steps,
        (1.0, done("s1", interrupted=True)),
        (1.0, agent(AgentState.LISTENING)),
        (5, None),
    )
    assert dropped(out) == [("wave_hand", DropReason.INTERRUPTED)]
    assert published(out) == [(0.1, "speaking")]


@pytest.mark.parametrize("interrupted", [False, True])
def test_rule3_a_failed_reply_drops_its_gestures(interrupted: bool) -> None:
    seq = RoomSequencer(CONFIG)
    steps = [(0.0, created("s1")), (0.0, tag("s1", "wave_hand")), (0.1, playout("s1"))]
    failed = done("s1", interrupted=interrupted, failure="llm_connection")
    out = run(seq, *steps, (1.0, failed), (1.0, agent(AgentState.LISTENING)), (5, None))
    assert dropped(out) == [("wave_hand", DropReason.REPLY_FAILED)]
    assert published(out) == [(0.1, "speaking")]


def test_rule3_an_interrupted_replys_gestures_never_fire_after_the_next_one() -> None:
    seq = RoomSequencer(CONFIG)
    first = [
        (0.0, created("s1")),
        (0.0, tag("s1", "wave_hand")),
        (0.1, playout("s1")),
        (0.5, done("s1", interrupted=True)),
    ]
    out = run(seq, *first, *reply("s2", "nod", at=1.0), (3.2, None), (10.0, None))
    assert [a for _, a in published(out)] == ["speaking", "speaking", "nod"]


def test_rule3_user_barge_in_drops_held_gestures() -> None:
    seq = RoomSequencer(CONFIG)
    out = run(seq, *reply("s1", "wave_hand"), (2.1, user(UserState.SPEAKING)), (3.0, None))
    assert dropped(out) == [("wave_hand", DropReason.USER_SPEAKING)]
    assert published(out) == [(0.1, "speaking")]


def ended() -> SessionEnded:
    return SessionEnded(room=ROOM, seq=next(_seq), reason="left")


def started() -> SessionStarted:
    return SessionStarted(room=ROOM, seq=next(_seq), agent_name="avatar-agent")


def test_rule3_session_end_drops_everything_and_what_follows_sends_nothing() -> None:
    seq = RoomSequencer(CONFIG)
    out = run(seq, *reply("s1", "nod", "bow"), (2.1, ended()))
    assert dropped(out) == [("nod", DropReason.SESSION_ENDED), ("bow", DropReason.SESSION_ENDED)]
    late = run(seq, *reply("s2", "nod", "speaking", at=5.0), (8.0, None))
    assert published(late) == []
    # An action tag after the end is still decided (dropped, visible); nothing else is.
    assert dropped(late) == [
        ("nod", DropReason.SESSION_ENDED),
        ("speaking", DropReason.SESSION_ENDED),
    ]
    assert seq.state.ended
    assert seq.state.speeches == {}
    assert seq.state.finished == ["s1"]  # its late events change nothing, now or later


def test_rule3_the_rooms_next_session_starts_afresh() -> None:
    """A room the caller names may hold one session after another."""
    seq = RoomSequencer(CONFIG)
    run(seq, *reply("s1", "nod", at=0.0), (1.0, user(UserState.SPEAKING)), (2.1, ended()))
    out = run(seq, (10.0, started()), *reply("s2", "nod", at=11.0), (14.0, None))
    assert published(out) == [(11.1, "speaking"), (14.0, "nod")]
    assert dropped(out) == []
    assert run(seq, *reply("s1", "bow", at=20.0), (23.0, None)) == []  # the last session's


def test_a_session_started_in_a_live_room_changes_nothing() -> None:
    seq = RoomSequencer(CONFIG)
    run(seq, (0.0, created("s1")), (0.0, tag("s1", "wave_hand")), (0.1, playout("s1")))
    before = seq.state.model_copy(deep=True)
    assert seq.handle(started(), 0.2) == []
    assert seq.state == before


def test_rule4_held_gestures_expire() -> None:
    seq = RoomSequencer(CONFIG)
    run(seq, (0.0, created("s1")), (0.0, tag("s1", "shrug")), (0.1, playout("s1")))
    assert seq.next_deadline() == pytest.approx(30.0)
    out = run(
        seq, (30.0, None), (31.0, done("s1")), (31.0, agent(AgentState.LISTENING)), (40, None)
    )
    assert dropped(out) == [("shrug", DropReason.EXPIRED)]
    assert published(out) == []


def test_rule5_without_a_global_allowlist_the_avatars_own_list_decides() -> None:
    seq = RoomSequencer(
        RulesConfig(allowed=frozenset(), debounce=0.2, ttl=30.0, cap_per_speech=3, min_gap=1.0)
    )
    out = run(
        seq,
        (0, created("s1")),
        (0, tag("s1", "moonwalk", valid=False)),
        (0, tag("s1", "juggle", 1)),
        (0, playout("s1")),
        (1, done("s1")),
        (1, agent(AgentState.LISTENING)),
        (2, None),
    )
    assert dropped(out) == [("moonwalk", DropReason.UNKNOWN_ACTION)]
    assert [name for _, name in published(out)] == ["speaking", "juggle"]


def test_rule5_unknown_actions_are_dropped() -> None:
    seq = RoomSequencer(CONFIG)
    out = run(
        seq, (0, created("s1")), (0, tag("s1", "moonwalk")), (0, tag("s1", "nod", 1, valid=False))
    )
    assert dropped(out) == [
        ("moonwalk", DropReason.UNKNOWN_ACTION),
        ("nod", DropReason.UNKNOWN_ACTION),
    ]


def test_rule5_duplicates_coalesce_and_the_cap_applies() -> None:
    seq = RoomSequencer(CONFIG)
    gestures = ["nod", "nod", "bow", "wave_hand", "shrug"]
    out = run(seq, *reply("s1", *gestures), (2.2, None), (3.2, None), (4.2, None), (9, None))
    assert dropped(out) == [("nod", DropReason.DUPLICATE), ("shrug", DropReason.CAP_EXCEEDED)]
    assert published(out) == [(0.1, "speaking"), (2.2, "nod"), (3.2, "bow"), (4.2, "wave_hand")]


def test_rule6_gestures_keep_a_minimum_gap_across_speeches() -> None:
    seq = RoomSequencer(CONFIG)
    out = run(
        seq, *reply("s1", "nod"), (2.2, None), *reply("s2", "bow", at=2.3), (4.5, None), (4.6, None)
    )
    # s2 is done at 4.3; debounce allows 4.5; the last gesture was at 2.2, so 3.2 is fine too.
    assert [(t, a) for t, a in published(out) if a != "speaking"] == [(2.2, "nod"), (4.5, "bow")]
    fast = RoomSequencer(CONFIG)
    out = run(fast, *reply("s1", "nod", "bow"), (2.2, None), (2.7, None), (3.2, None))
    assert [(t, a) for t, a in published(out) if a != "speaking"] == [(2.2, "nod"), (3.2, "bow")]


def test_repeated_or_late_events_for_a_finished_speech_change_nothing() -> None:
    seq = RoomSequencer(CONFIG)
    first = run(seq, *reply("s1", "nod"), (2.2, None))
    again = run(seq, *reply("s1", "nod", at=3.0), (6.0, None))  # a redelivery of it all
    assert published(first) == [(0.1, "speaking"), (2.2, "nod")]
    assert again == []


def test_state_survives_a_round_trip_through_json() -> None:
    seq = RoomSequencer(CONFIG)
    run(seq, *reply("s1", "nod", "bow"), (2.2, None))
    restored = RoomSequencer(CONFIG, RoomState.model_validate_json(seq.state.model_dump_json()))
    assert published(run(restored, (3.2, None))) == [(3.2, "bow")]


def test_a_room_follows_a_bounded_number_of_speeches() -> None:
    seq = RoomSequencer(CONFIG)
    out = []
    for n in range(MAX_SPEECHES + 5):  # replies created and never finished
        out += run(seq, (n, created(f"s{n}")), (n, tag(f"s{n}", "nod")))
    assert len(seq.state.speeches) == MAX_SPEECHES
    assert dropped(out) == [("nod", DropReason.EXPIRED)] * 5
    assert run(seq, (100, playout("s0"))) == []  # an evicted speech is finished


def test_a_speech_remembers_no_more_names_than_its_cap() -> None:
    seq = RoomSequencer(CONFIG)
    names = ["nod", "bow", "shrug", "wave_hand"] + [f"x{i}" for i in range(50)]
    run(seq, (0, created("s1")), *((0, tag("s1", n, i)) for i, n in enumerate(names)))
    assert len(seq.state.speeches["s1"].seen) == CONFIG.cap_per_speech


def test_the_agent_events_the_rules_do_not_read_change_nothing() -> None:
    sequencer = RoomSequencer(CONFIG)
    for event in (created("s1"), tag("s1", "wave_hand", 0), playout("s1")):
        sequencer.handle(event, 10.0)
    before = sequencer.state.model_copy(deep=True)
    unread = [
        DeliveryDone(room=ROOM, seq=next(_seq), delivery_id="a" * 32, outcome=DeliveryOutcome.SENT),
    ]
    assert {e.type for e in unread} == UNREAD
    for event in unread:
        assert sequencer.handle(event, 10.05) == []  # the held gesture is not due yet
    assert sequencer.state == before
