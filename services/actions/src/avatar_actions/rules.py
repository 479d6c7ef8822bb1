"""Sequencing rules for one room: events and the time in, decisions out.

Pure and deterministic: :meth:`RoomSequencer.handle` takes an event and the current time,
:meth:`RoomSequencer.tick` takes the time; both return the decisions now due, and
:meth:`RoomSequencer.next_deadline` says when ``tick`` must run next. Nothing here sleeps,
raises for a refusal, or does I/O; the state is a plain model that serialises to JSON, so
the service can keep it durable. Every rule is a row in ``docs/actions.md``:

1. ``speaking`` is published once per speech, when its playout starts.
2. Gestures belong to the speech whose text held their tag; they are released in tag
   order once that speech is done and not interrupted, the agent is listening or idle
   and the user is not speaking, after ``debounce`` seconds.
3. An interrupted speech, a reply a provider failed, the user starting to speak, or the
   session ending drops the gestures held for it; after the session's end an action tag
   is dropped and nothing else changes the room until its next ``session_started``.
4. A held gesture expires ``ttl`` seconds after its tag was parsed.
5. An action the avatar does not allow is dropped; a repeated gesture within a speech is
   coalesced (dropped as a duplicate); past ``cap_per_speech`` gestures are dropped.
6. Released gestures are at least ``min_gap`` seconds apart.

The state is bounded whatever the events: at most :data:`MAX_SPEECHES` speeches are
followed at once (a new one beyond that drops the oldest one's held gestures as
``expired``), a speech remembers at most ``cap_per_speech`` gesture names, and at most
:data:`_REMEMBERED` finished speech ids are kept.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from pydantic import BaseModel, Field

from avatar_shared.events import (
    AgentState,
    AgentStateChanged,
    DeliveryDone,
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

SPEAKING = "speaking"
_RESTING = frozenset({AgentState.LISTENING, AgentState.IDLE})
#: The agent events :meth:`RoomSequencer.handle` does not read: they change nothing in a
#: room, so the engine neither reads nor writes the room's state for them (any other type
#: is read, a new one included; ``session_started`` opens a room's next session).
UNREAD = frozenset({DeliveryDone.model_fields["type"].default})
_REMEMBERED = 32  # finished speeches remembered, so late or repeated events change nothing
#: Speeches followed at once in a room; a livekit-agents session has one or two.
MAX_SPEECHES = 16


@dataclass(frozen=True)
class RulesConfig:
    allowed: Collection[str]
    debounce: float = 0.2
    ttl: float = 30.0
    cap_per_speech: int = 3
    min_gap: float = 1.0


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    action: str
    speech_id: str | None
    cause_id: str
    reason: DropReason | None = None


class Held(BaseModel):
    action: str
    index: int
    parsed_at: float
    cause_id: str


class Speech(BaseModel):
    created_order: int
    held: list[Held] = Field(default_factory=list)
    seen: list[str] = Field(default_factory=list)  # gestures already held or sent
    speaking_sent: bool = False
    done_at: float | None = None


class RoomState(BaseModel):
    agent: AgentState = AgentState.INITIALIZING
    user: UserState = UserState.LISTENING
    speeches: dict[str, Speech] = Field(default_factory=dict)
    next_order: int = 0
    last_gesture_at: float | None = None
    finished: list[str] = Field(default_factory=list)
    ended: bool = False


class RoomSequencer:
    def __init__(self, config: RulesConfig, state: RoomState | None = None) -> None:
        self.config = config
        self.state = state or RoomState()

    # --- events ---------------------------------------------------------------------------

    def handle(self, event: Event, now: float) -> list[Decision]:
        """Apply one event; returns what it decided now (``tick`` may decide more later)."""
        if self.state.ended:
            return self._after_the_end(event)
        if event.speech_id and event.speech_id in self.state.finished:
            return []
        decisions: list[Decision] = []
        if event.speech_id and event.speech_id not in self.state.speeches:
            decisions += self._make_room_for_a_speech()
        match event:
            case SpeechCreated():
                self._speech(event.speech_id)
            case TagParsed(kind=TagKind.ACTION):
                decisions += self._tag(event, now)
            case PlayoutStarted():
                speech = self._speech(event.speech_id)
                if not speech.speaking_sent:
                    speech.speaking_sent = True
                    decisions.append(
                        Decision(Outcome.PUBLISHED, SPEAKING, event.speech_id, event.id)
                    )
            case SpeechDone():
                speech = self._speech(event.speech_id)
                speech.done_at = now
                if event.failure:  # what the broken reply held is not what the user heard
                    decisions += self._drop_held(event.speech_id, DropReason.REPLY_FAILED)
                elif event.interrupted:
                    decisions += self._drop_held(event.speech_id, DropReason.INTERRUPTED)
            case AgentStateChanged():
                self.state.agent = event.new_state
            case UserStateChanged():
                self.state.user = event.new_state
                if event.new_state is UserState.SPEAKING:
                    for speech_id in list(self.state.speeches):
                        decisions += self._drop_held(speech_id, DropReason.USER_SPEAKING)
            case SessionEnded():
                for speech_id in list(self.state.speeches):
                    decisions += self._drop_held(speech_id, DropReason.SESSION_ENDED)
                # Its speeches stay known as finished: late events of theirs change
                # nothing, in this session's end or in the room's next session.
                finished = [*self.state.finished, *self.state.speeches][-_REMEMBERED:]
                self.state = RoomState(ended=True, finished=finished)
        return decisions + self.tick(now)

    def _after_the_end(self, event: Event) -> list[Decision]:
        """The room's session ended: an action tag is dropped, anything else changes
        nothing, until a ``session_started`` opens the room's next session (a room the
        caller names may hold one session after another)."""
        if isinstance(event, SessionStarted):
            self.state = RoomState(finished=self.state.finished)
        elif isinstance(event, TagParsed) and event.kind is TagKind.ACTION:
            reason = DropReason.SESSION_ENDED
            return [Decision(Outcome.DROPPED, event.name, event.speech_id, event.id, reason)]
        return []

    def _speech(self, speech_id: str | None) -> Speech:
        assert speech_id is not None  # speech events always carry one (the contract says so)
        speech = self.state.speeches.get(speech_id)
        if speech is None:
            speech = Speech(created_order=self.state.next_order)
            self.state.next_order += 1
            self.state.speeches[speech_id] = speech
        return speech

    def _make_room_for_a_speech(self) -> list[Decision]:
        if len(self.state.speeches) < MAX_SPEECHES:
            return []
        oldest = min(self.state.speeches, key=lambda sid: self.state.speeches[sid].created_order)
        dropped = self._drop_held(oldest, DropReason.EXPIRED)
        del self.state.speeches[oldest]
        self.state.finished = [*self.state.finished, oldest][-_REMEMBERED:]
        return dropped

    def _tag(self, event: TagParsed, now: float) -> list[Decision]:
        speech = self._speech(event.speech_id)
        name = event.name

        def drop(reason: DropReason) -> list[Decision]:
            return [Decision(Outcome.DROPPED, name, event.speech_id, event.id, reason)]

        if not event.valid or (self.config.allowed and name not in self.config.allowed):
            return drop(DropReason.UNKNOWN_ACTION)
        if name == SPEAKING:  # published at playout start whatever the text says
            return [] if not speech.speaking_sent else drop(DropReason.DUPLICATE)
        if name in speech.seen:
            return drop(DropReason.DUPLICATE)
        if len(speech.seen) >= self.config.cap_per_speech:
            return drop(DropReason.CAP_EXCEEDED)
        speech.seen.append(name)
        speech.held.append(Held(action=name, index=event.index, parsed_at=now, cause_id=event.id))
        speech.held.sort(key=lambda held: held.index)
        return []

    def _drop_held(self, speech_id: str, reason: DropReason) -> list[Decision]:
        speech = self.state.speeches.get(speech_id)
        if speech is None:
            return []
        dropped = [
            Decision(Outcome.DROPPED, h.action, speech_id, h.cause_id, reason) for h in speech.held
        ]
        speech.held.clear()
        return dropped

    # --- time -----------------------------------------------------------------------------

    def tick(self, now: float) -> list[Decision]:
        """Expire what is too old and release what is due at ``now``."""
        decisions = self._expire(now)
        while (due := self._next_release(now)) is not None:
            speech_id, speech = due
            held = speech.held.pop(0)
            self.state.last_gesture_at = now
            decisions.append(Decision(Outcome.PUBLISHED, held.action, speech_id, held.cause_id))
        self._forget_finished()
        return decisions

    def next_deadline(self) -> float | None:
        """When ``tick`` next has something to do, if anything is held."""
        deadlines = []
        for speech in self.state.speeches.values():
            if not speech.held:
                continue
            deadlines.append(min(h.parsed_at for h in speech.held) + self.config.ttl)
            if speech.done_at is not None and self._resting():
                deadlines.append(self._release_time(speech))
        return min(deadlines, default=None)

    def _expire(self, now: float) -> list[Decision]:
        expired = []
        for speech_id, speech in self.state.speeches.items():
            keep = []
            for held in speech.held:
                if now - held.parsed_at >= self.config.ttl:
                    expired.append(
                        Decision(
                            Outcome.DROPPED,
                            held.action,
                            speech_id,
                            held.cause_id,
                            DropReason.EXPIRED,
                        )
                    )
                else:
                    keep.append(held)
            speech.held = keep
        return expired

    def _resting(self) -> bool:
        return self.state.agent in _RESTING and self.state.user is not UserState.SPEAKING

    def _release_time(self, speech: Speech) -> float:
        assert speech.done_at is not None
        after_gap = (
            self.state.last_gesture_at + self.config.min_gap
            if self.state.last_gesture_at is not None
            else speech.done_at
        )
        return max(speech.done_at + self.config.debounce, after_gap)

    def _next_release(self, now: float) -> tuple[str, Speech] | None:
        """The oldest speech's first gesture, if it may go out at ``now``."""
        if not self._resting():
            return None
        waiting = [(s.created_order, sid, s) for sid, s in self.state.speeches.items() if s.held]
        if not waiting:
            return None
        _, speech_id, speech = min(waiting)
        if speech.done_at is None or now < self._release_time(speech):
            return None
        return speech_id, speech

    def _forget_finished(self) -> None:
        for speech_id in [
            sid for sid, s in self.state.speeches.items() if s.done_at is not None and not s.held
        ]:
            del self.state.speeches[speech_id]
            self.state.finished = [*self.state.finished, speech_id][-_REMEMBERED:]
