"""The versioned wire contract for everything that crosses the bus.

Every message is one JSON object: an envelope (``v``, ``id``, ``type``, ``room``,
``avatar_id``, ``speech_id``, ``seq``, ``ts``) plus the fields of its type. Rules:

- **Producers are strict.** Models forbid unknown fields and coerce nothing, so a producer
  bug raises :class:`pydantic.ValidationError` before anything is sent.
- **Consumers are tolerant.** :func:`decode_event` ignores fields it does not know (a newer
  producer may add some) and returns ``None`` for event types it does not know.
  Anything else wrong raises :class:`InvalidEvent`, which consumers log, count and drop.
- ``id`` is unique per event and doubles as the JetStream ``Nats-Msg-Id``, so a retried
  publish is stored once. ``seq`` increases by one per event within a room and producer.
- Adding an optional field is compatible; anything else needs ``v`` (and the subject
  prefix) to change.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)

from avatar_shared import subjects
from avatar_shared.config import describe
from avatar_shared.rooms import check_room

SCHEMA_VERSION: Final = 1

RoomName = Annotated[
    str, AfterValidator(check_room), Field(description="LiveKit room name, 1-256 UTF-8 bytes")
]
#: Letters, digits, '-' and '_', at most 128 characters, starting with a letter or digit.
AvatarId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")]
SpeechId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")]
EventId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
Name = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]{1,64}$")]


def new_event_id() -> str:
    return uuid.uuid4().hex


def utc_now() -> datetime:
    return datetime.now(UTC)


class AgentState(StrEnum):
    """Values of livekit-agents' ``lk.agent.state``."""

    INITIALIZING = "initializing"
    IDLE = "idle"
    LISTENING = "listening"
    THINKING = "thinking"
    SPEAKING = "speaking"


class UserState(StrEnum):
    """Values of livekit-agents' ``UserState``."""

    SPEAKING = "speaking"
    LISTENING = "listening"
    AWAY = "away"


class TagKind(StrEnum):
    EMOTION = "emotion"
    ACTION = "action"


class Outcome(StrEnum):
    PUBLISHED = "published"
    DROPPED = "dropped"


class DropReason(StrEnum):
    """Why the actions service did not send an action (its vocabulary as a producer;
    consumers read ``ActionDecision.reason`` as a plain name, so new values are
    compatible)."""

    UNKNOWN_ACTION = "unknown_action"
    DUPLICATE = "duplicate"
    CAP_EXCEEDED = "cap_exceeded"
    INTERRUPTED = "interrupted"
    USER_SPEAKING = "user_speaking"
    SESSION_ENDED = "session_ended"
    EXPIRED = "expired"
    SEND_FAILED = "send_failed"
    STALE = "stale"
    REPLY_FAILED = "reply_failed"


class Event(BaseModel):
    """The envelope every event carries."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    source: ClassVar[str]

    v: Literal[1] = SCHEMA_VERSION
    id: EventId = Field(default_factory=new_event_id)
    type: str
    room: RoomName
    avatar_id: AvatarId | None = None
    speech_id: SpeechId | None = None
    seq: int = Field(ge=0, description="Per-room, per-producer sequence number")
    ts: AwareDatetime = Field(default_factory=utc_now, description="When it happened (UTC)")

    @property
    def subject(self) -> str:
        return subjects.subject_for(self.source, self.type, self.room)

    @property
    def subject_template(self) -> str:
        return subjects.subject_template(self.source, self.type)

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()


class _AgentEvent(Event):
    source: ClassVar[str] = subjects.AGENT


class _SpeechEvent(_AgentEvent):
    speech_id: SpeechId


class SpeechCreated(_SpeechEvent):
    """The agent started producing a reply (``speech_created``)."""

    type: Literal["speech_created"] = "speech_created"
    source_kind: Literal["say", "generate_reply", "tool_response"] = Field(
        description="What created the speech, as livekit-agents reports it"
    )
    user_initiated: bool


class TagParsed(_SpeechEvent):
    """An inline tag found in a reply; ``valid`` says whether the avatar allows it."""

    type: Literal["tag_parsed"] = "tag_parsed"
    kind: TagKind
    name: Name
    valid: bool
    index: int = Field(ge=0, description="Order of the tag within its speech")
    char_offset: int = Field(ge=0, description="Offset in the clean (spoken) text")
    word_index: int = Field(ge=0, description="Words of clean text before the tag")


class PlayoutStarted(_SpeechEvent):
    """The first audio of a speech started playing in the room."""

    type: Literal["playout_started"] = "playout_started"


class SpeechDone(_SpeechEvent):
    """A speech finished playing, was interrupted, or failed."""

    type: Literal["speech_done"] = "speech_done"
    interrupted: bool
    failure: Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]{1,64}$")] | None = Field(
        None,
        description="Set when a provider failed the reply (it ended early or never started): "
        "<stage>_<kind>, e.g. llm_rate_limited, llm_timeout, tts_connection. An open set: "
        "consumers treat a value they do not know as opaque.",
    )


class AgentStateChanged(_AgentEvent):
    type: Literal["agent_state"] = "agent_state"
    old_state: AgentState
    new_state: AgentState


class UserStateChanged(_AgentEvent):
    type: Literal["user_state"] = "user_state"
    old_state: UserState
    new_state: UserState


class SessionStarted(_AgentEvent):
    type: Literal["session_started"] = "session_started"
    agent_name: Annotated[str, StringConstraints(min_length=1, max_length=128)]


class SessionEnded(_AgentEvent):
    type: Literal["session_ended"] = "session_ended"
    reason: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    duration_seconds: float | None = Field(
        None, ge=0, description="How long the session ran, from session_started"
    )


class ActionDecision(Event):
    """What the actions service did with one action, published or dropped (and why)."""

    source: ClassVar[str] = subjects.ACTIONS

    type: Literal["action_decision"] = "action_decision"
    action: Name
    outcome: Outcome
    reason: Name | None = Field(
        None,
        description="Why it was dropped: a DropReason value. New reasons may be added in a "
        "compatible change: consumers treat a reason they do not know as opaque.",
    )
    cause_id: EventId = Field(description="id of the event that led to this decision")


class AvatarDelivery(Event):
    """A packet for the agent to publish into its room (``ACTIONS_DELIVERY=agent``).

    The actions service decided it; the agent job of ``room`` publishes ``payload`` with
    ``local_participant.publish_data(reliable=True, topic=..., destination_identities=...)``
    once per ``id`` (the packet's nonce as hex: the same on every resend, so JetStream
    stores it once), unless ``deadline`` has passed, and answers with a ``delivery_done``.
    """

    source: ClassVar[str] = subjects.ACTIONS

    type: Literal["avatar_delivery"] = "avatar_delivery"
    action: Name
    payload: Annotated[str, StringConstraints(min_length=1, max_length=1024)] = Field(
        description="The data packet's bytes, as UTF-8 text"
    )
    topic: Annotated[str, StringConstraints(max_length=256)] = ""
    destinations: list[Annotated[str, StringConstraints(min_length=1, max_length=256)]] = Field(
        default_factory=list, max_length=64, description="Participant identities; empty: all"
    )
    deadline: AwareDatetime = Field(description="Not published after this instant (UTC)")
    cause_id: EventId = Field(description="id of the event that led to this packet")


class DeliveryOutcome(StrEnum):
    SENT = "sent"  # publish_data succeeded
    STALE = "stale"  # the deadline had passed: not published
    FAILED = "failed"  # publish_data failed until the deadline


class DeliveryDone(_AgentEvent):
    """What the agent did with one ``avatar_delivery``."""

    type: Literal["delivery_done"] = "delivery_done"
    delivery_id: EventId
    outcome: DeliveryOutcome


EVENT_TYPES: dict[str, type[Event]] = {
    model.model_fields["type"].default: model
    for model in (
        SpeechCreated,
        TagParsed,
        PlayoutStarted,
        SpeechDone,
        AgentStateChanged,
        UserStateChanged,
        SessionStarted,
        SessionEnded,
        ActionDecision,
        AvatarDelivery,
        DeliveryDone,
    )
}

AnyEvent = Annotated[
    SpeechCreated
    | TagParsed
    | PlayoutStarted
    | SpeechDone
    | AgentStateChanged
    | UserStateChanged
    | SessionStarted
    | SessionEnded
    | ActionDecision
    | AvatarDelivery
    | DeliveryDone,
    Field(discriminator="type"),
]
ANY_EVENT: TypeAdapter[Event] = TypeAdapter(AnyEvent)


class InvalidEvent(ValueError):
    """A message that is not a valid event of this contract."""


def decode_event(data: bytes | str) -> Event | None:
    """Parse a message body as a consumer: unknown fields ignored, unknown types -> None."""
    try:
        obj: Any = json.loads(data)
    except (ValueError, RecursionError) as exc:
        # ValueError: not JSON, not UTF-8, or a number past int()'s 4,300 digits;
        # RecursionError: nested deeper than the parser goes. Each is a message to drop.
        raise InvalidEvent(f"body is not JSON: {str(exc)[:200]}") from exc
    if not isinstance(obj, dict):
        raise InvalidEvent("body is not a JSON object")
    event_type = obj.get("type")
    if not isinstance(event_type, str):
        raise InvalidEvent("body has no string 'type'")
    model = EVENT_TYPES.get(event_type)
    if model is None:
        return None
    fields = model.model_fields
    known = {key: value for key, value in obj.items() if key in fields}
    try:
        return model.model_validate(known, strict=False)
    except ValidationError as exc:
        raise InvalidEvent(describe(exc, root="body")) from exc
