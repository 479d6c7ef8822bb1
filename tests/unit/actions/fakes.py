"""In-memory adapters of the actions engine's ports (avatar_actions.ports), with a clock
the test moves by hand. They keep what happened, for the tests to look at."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from avatar_actions.partitions import WORK_PREFIX
from avatar_actions.ports import Packet, PublishError
from avatar_actions.state import StoredRoom
from avatar_shared.events import (
    AgentState,
    AgentStateChanged,
    Event,
    PlayoutStarted,
    SpeechCreated,
    SpeechDone,
    TagKind,
    TagParsed,
    UserState,
    UserStateChanged,
)
from tests.support.livekit_dedup import PacketDeduper


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Item:
    """A work-stream message: its settlement is recorded, not sent anywhere."""

    event: Event
    settled: list[str] = field(default_factory=list)

    @property
    def subject(self) -> str:
        return f"{WORK_PREFIX}.0.{self.event.subject}"

    @property
    def data(self) -> bytes:
        return self.event.to_json()

    @property
    def headers(self) -> Mapping[str, str] | None:
        return None

    async def ack(self) -> None:
        self.settled.append("ack")

    async def nak(self, delay: float | None = None) -> None:
        self.settled.append("nak")

    async def term(self) -> None:
        self.settled.append("term")

    def again(self) -> Item:
        """The same message delivered once more."""
        return Item(self.event)


class MemoryRooms:
    def __init__(self) -> None:
        self.saved: dict[tuple[int, str], str] = {}
        self.fail = False

    async def load(self, partition: int, room: str) -> StoredRoom:
        raw = self.saved.get((partition, room))
        return StoredRoom.model_validate_json(raw) if raw else StoredRoom()

    async def save(self, partition: int, room: str, stored: StoredRoom) -> None:
        if self.fail:
            raise TimeoutError("room store unavailable")
        self.saved[(partition, room)] = stored.model_dump_json()

    async def rooms(self, partition: int) -> list[str]:
        return [room for p, room in self.saved if p == partition]


class FakeLiveKit:
    """Takes packets and de-duplicates them by nonce as livekit-server does, or refuses
    them: ``down`` (503 after retries), ``refuse`` (4xx, final), ``lost_answer`` (takes
    the packet, but the answer never comes: a timeout), or ``crash_after_send`` (takes
    the packet, then the caller dies before hearing so: a BaseException the engine does
    not handle)."""

    def __init__(self) -> None:
        self.delivered: list[Packet] = []
        self.calls: list[Packet] = []
        self.down = False
        self.refuse = False
        self.lost_answer = False
        self.crash_after_send = False
        self.announces = False
        self._dedupers: dict[str, PacketDeduper] = {}

    async def publish(self, packet: Packet) -> None:
        self.calls.append(packet)
        if self.down:
            raise PublishError("unavailable", permanent=False)
        if self.refuse:
            raise PublishError("refused", permanent=True)
        if not self._dedupers.setdefault(packet.room, PacketDeduper()).is_duplicate(packet.nonce):
            self.delivered.append(packet)
        if self.crash_after_send:
            raise Crash
        if self.lost_answer:
            raise PublishError("timed out", permanent=False)

    def actions(self, room: str) -> list[str]:
        return [p.action for p in self.delivered if p.room == room]


class Crash(BaseException):
    """The process died here."""


class Decisions:
    def __init__(self) -> None:
        self.stored: dict[str, Event] = {}  # by id: a repeat is stored once, as JetStream does

    async def publish(self, event: Event) -> None:
        self.stored.setdefault(event.id, event)

    def of(self, room: str) -> list[tuple[str, str, str | None]]:
        return [
            (e.action, e.outcome.value, e.reason)  # type: ignore[attr-defined]
            for e in self.stored.values()
            if e.room == room
        ]


class Turns:
    """Agent events for one room, numbered and timed as the agent would."""

    def __init__(self, room: str, clock: Clock) -> None:
        self.room = room
        self.clock = clock
        self._seq = itertools.count()

    def _common(self) -> dict[str, Any]:
        return {
            "room": self.room,
            "avatar_id": "demo-avatar",
            "seq": next(self._seq),
            "ts": datetime.fromtimestamp(self.clock(), UTC),
        }

    def opening(self, speech: str, *gestures: str) -> list[Event]:
        """The reply starts: created, the agent speaks, its tags, its audio plays."""
        return [
            SpeechCreated(
                **self._common(),
                speech_id=speech,
                source_kind="generate_reply",
                user_initiated=False,
            ),
            AgentStateChanged(
                **self._common(), old_state=AgentState.THINKING, new_state=AgentState.SPEAKING
            ),
            *(
                TagParsed(
                    **self._common(),
                    speech_id=speech,
                    kind=TagKind.ACTION,
                    name=g,
                    valid=True,
                    index=i,
                    char_offset=0,
                    word_index=0,
                )
                for i, g in enumerate(gestures)
            ),
            PlayoutStarted(**self._common(), speech_id=speech),
        ]

    def closing(self, speech: str, *, interrupted: bool = False) -> list[Event]:
        """The reply ends and the agent listens again."""
        return [
            SpeechDone(**self._common(), speech_id=speech, interrupted=interrupted),
            AgentStateChanged(
                **self._common(), old_state=AgentState.SPEAKING, new_state=AgentState.LISTENING
            ),
        ]

    def user_speaks(self) -> list[Event]:
        return [
            UserStateChanged(
                **self._common(), old_state=UserState.LISTENING, new_state=UserState.SPEAKING
            )
        ]


def items(events: Sequence[Event]) -> list[Item]:
    return [Item(e) for e in events]
