"""The sequencing rules' invariants over any sequence of events and times (hypothesis).

Whatever the agent sends, in whatever order, repeated or late: each tag gets at most one
decision, a speech at most one ``speaking``, a gesture goes out only for a tag of that
name whose speech finished whole, released gestures keep their gap, nothing goes out
between a session's end and the room's next session, nothing stays held for ever, and
the state stays within its bounds.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from avatar_actions.rules import MAX_SPEECHES, Decision, RoomSequencer
from avatar_shared.events import (
    AgentState,
    AgentStateChanged,
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
from tests.unit.actions.test_rules import CONFIG, ROOM

#: A few speeches most of the time (so replies interleave and finish), sometimes more
#: than a room follows at once.
SPEECHES = st.one_of(
    st.sampled_from(["s0", "s1", "s2"]),
    st.sampled_from([f"s{n}" for n in range(MAX_SPEECHES + 4)]),
)
NAMES = ["speaking", "wave_hand", "nod", "bow", "shrug", "moonwalk"]
_seq = itertools.count()

Step = tuple[float, tuple[object, ...]]  # (time since the previous step, what happens)
delay = st.floats(min_value=0.0, max_value=3.0)
single = st.tuples(
    delay,
    st.one_of(
        st.tuples(st.just("created"), SPEECHES),
        st.tuples(
            st.just("tag"),
            SPEECHES,
            st.sampled_from(NAMES),
            st.booleans(),  # valid
            st.integers(min_value=0, max_value=5),  # index
        ),
        st.tuples(st.just("playout"), SPEECHES),
        st.tuples(st.just("done"), SPEECHES, st.booleans(), st.booleans()),
        st.tuples(st.just("agent"), st.sampled_from(list(AgentState))),
        st.tuples(st.just("user"), st.sampled_from(list(UserState))),
        st.tuples(st.just("ended")),
        st.tuples(st.just("started")),
        st.tuples(st.just("tick")),
    ),
)


@st.composite
def reply(draw: st.DrawFn) -> list[Step]:
    """A reply as the agent reports one: created, its tags, playout, done, listening."""
    speech = draw(SPEECHES)
    names = draw(st.lists(st.sampled_from(NAMES), max_size=5))
    steps: list[Step] = [(draw(delay), ("created", speech)), (0.0, ("agent", "speaking"))]
    steps += [(0.0, ("tag", speech, name, True, i)) for i, name in enumerate(names)]
    steps += [
        (0.1, ("playout", speech)),
        (draw(delay), ("done", speech, draw(st.booleans()), draw(st.booleans()))),
        (0.0, ("agent", "listening")),
    ]
    if draw(st.booleans()):  # the user speaks up before the gestures are due
        steps += [(0.0, ("user", "speaking")), (draw(delay), ("user", "listening"))]
    return [*steps, (draw(delay), ("tick",))]


steps = st.lists(st.one_of(reply(), st.lists(single, max_size=3)), max_size=25).map(
    lambda blocks: [step for block in blocks for step in block]
)


def event_of(step: tuple[object, ...]) -> Event | None:
    kind, *args = step
    seq = next(_seq)
    match kind:
        case "created":
            return SpeechCreated(
                room=ROOM,
                speech_id=str(args[0]),
                seq=seq,
                source_kind="generate_reply",
                user_initiated=False,
            )
        case "tag":
            speech, name, valid, index = args
            return TagParsed(
                room=ROOM,
                speech_id=str(speech),
                seq=seq,
                kind=TagKind.ACTION,
                name=str(name),
                valid=bool(valid),
                index=int(str(index)),
                char_offset=0,
                word_index=0,
            )
        case "playout":
            return PlayoutStarted(room=ROOM, speech_id=str(args[0]), seq=seq)
        case "done":
            speech, interrupted, failed = args
            return SpeechDone(
                room=ROOM,
                speech_id=str(speech),
                seq=seq,
                interrupted=bool(interrupted),
                failure="llm_error" if failed else None,
            )
        case "agent":
            state = AgentState(str(args[0]))
            return AgentStateChanged(room=ROOM, seq=seq, old_state=state, new_state=state)
        case "user":
            user = UserState(str(args[0]))
            return UserStateChanged(room=ROOM, seq=seq, old_state=user, new_state=user)
        case "ended":
            return SessionEnded(room=ROOM, seq=seq, reason="left")
        case "started":
            return SessionStarted(room=ROOM, seq=seq, agent_name="avatar-agent")
    return None  # a tick


@dataclass
class Run:
    """What was fed and what came out, and what each published gesture found."""

    events: dict[str, Event] = field(default_factory=dict)
    out: list[tuple[float, Decision]] = field(default_factory=list)
    #: for each gesture published: (speech finished whole at least ``debounce`` ago,
    #: agent resting, user silent since its tag, the room's session on)
    found: list[tuple[bool, bool, bool, bool]] = field(default_factory=list)


def feed(raw: list[Step]) -> tuple[RoomSequencer, Run]:
    """Feed the steps, keeping a model of what the room has been told."""
    sequencer = RoomSequencer(CONFIG)
    run = Run()
    now = 0.0
    ended = False
    agent, user = AgentState.INITIALIZING, UserState.LISTENING
    whole: dict[str, tuple[float, bool]] = {}  # when and how its first speech_done came
    step_of: dict[str, int] = {}  # each event's place in the run
    user_spoke = -1  # the place of the user's latest start of speech
    for place, (pause, step) in enumerate(raw):
        now += pause
        event = event_of(step)
        if event is None:
            decisions = sequencer.tick(now)
        else:
            run.events[event.id] = event
            step_of[event.id] = place
            decisions = sequencer.handle(event, now)
            match event:
                case SessionEnded():
                    ended = True
                case SessionStarted() if ended:
                    ended, agent, user = False, AgentState.INITIALIZING, UserState.LISTENING
                case AgentStateChanged() if not ended:
                    agent = event.new_state
                case UserStateChanged() if not ended:
                    user = event.new_state
                    user_spoke = place if user is UserState.SPEAKING else user_spoke
                case SpeechDone() if not ended and event.speech_id not in whole:
                    whole[str(event.speech_id)] = (now, not (event.interrupted or event.failure))
        run.out += [(now, d) for d in decisions]
        for decision in decisions:
            if decision.outcome is Outcome.PUBLISHED and decision.action != "speaking":
                resting = agent in (AgentState.LISTENING, AgentState.IDLE)
                silent = user is not UserState.SPEAKING and user_spoke < step_of[decision.cause_id]
                done_at, ok = whole.get(str(decision.speech_id), (now, False))
                finished = ok and now - done_at >= CONFIG.debounce - 1e-9
                run.found.append((finished, resting, silent, not ended))
        assert len(sequencer.state.speeches) <= MAX_SPEECHES
        assert len(sequencer.state.finished) <= 32
        for speech in sequencer.state.speeches.values():
            assert len(speech.seen) <= CONFIG.cap_per_speech
    end = now + CONFIG.ttl + 1
    run.out += [(end, d) for d in sequencer.tick(end)]
    return sequencer, run


@settings(max_examples=500)
@given(steps)
def test_the_rules_hold_whatever_the_agent_sends(raw: list[Step]) -> None:
    sequencer, run = feed(raw)
    published = [(t, d) for t, d in run.out if d.outcome is Outcome.PUBLISHED]
    speaking = [d for _, d in published if d.action == "speaking"]
    gestures = [(t, d) for t, d in published if d.action != "speaking"]

    # Each tag is decided at most once.
    tags = Counter(d.cause_id for _, d in run.out if isinstance(run.events[d.cause_id], TagParsed))
    assert all(n == 1 for n in tags.values())
    # A speech speaks once, at its playout.
    assert len({d.speech_id for d in speaking}) == len(speaking)
    assert all(isinstance(run.events[d.cause_id], PlayoutStarted) for d in speaking)
    # A gesture is a valid, allowed tag of that name and speech, once per speech and name,
    # at most cap_per_speech per speech.
    for _, decision in gestures:
        cause = run.events[decision.cause_id]
        assert isinstance(cause, TagParsed)
        assert (cause.name, cause.speech_id, cause.valid) == (
            decision.action,
            decision.speech_id,
            True,
        )
        assert decision.action in CONFIG.allowed
    per_speech = Counter(d.speech_id for _, d in gestures)
    assert all(n <= CONFIG.cap_per_speech for n in per_speech.values())
    assert len({(d.speech_id, d.action) for _, d in gestures}) == len(gestures)
    # ...released only when its speech finished whole, the agent rests, the user is
    # silent and the session is on (nothing between its end and the room's next one)...
    assert all(all(found) for found in run.found)
    # ...and at least min_gap after the previous one.
    times = [t for t, _ in gestures]
    assert all(b - a >= CONFIG.min_gap - 1e-9 for a, b in itertools.pairwise(times))
    # Nothing is held for ever.
    assert all(not s.held for s in sequencer.state.speeches.values())
