"""One valid example of every event type, for contract and bus tests."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from avatar_shared.events import (
    ActionDecision,
    AgentState,
    AgentStateChanged,
    AvatarDelivery,
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


def one_of_each(room: str = "room.1 ✨", avatar_id: str = "ava-1") -> list[Event]:
    common = {"room": room, "avatar_id": avatar_id}
    speech = {**common, "speech_id": "speech_abc"}
    return [
        SessionStarted(**common, seq=0, agent_name="avatar-agent"),
        AgentStateChanged(
            **common, seq=1, old_state=AgentState.INITIALIZING, new_state=AgentState.LISTENING
        ),
        SpeechCreated(**speech, seq=2, source_kind="generate_reply", user_initiated=False),
        TagParsed(
            **speech,
            seq=3,
            kind=TagKind.ACTION,
            name="wave_hand",
            valid=True,
            index=0,
            char_offset=5,
            word_index=1,
        ),
        PlayoutStarted(**speech, seq=4),
        UserStateChanged(
            **common, seq=5, old_state=UserState.LISTENING, new_state=UserState.SPEAKING
        ),
        SpeechDone(**speech, seq=6, interrupted=True),
        ActionDecision(
            **speech,
            seq=0,
            action="wave_hand",
            outcome=Outcome.DROPPED,
            reason=DropReason.INTERRUPTED,
            cause_id="0123abcd",
        ),
        AvatarDelivery(
            **speech,
            seq=1,
            id=uuid.uuid4().hex,  # the packet's nonce, as hex
            action="wave_hand",
            payload='{"type": "AVATAR_UPDATE", "action": "wave_hand"}',
            deadline=datetime(2030, 1, 1, tzinfo=UTC),
            cause_id="0123abcd",
        ),
        DeliveryDone(
            **common,
            seq=7,
            delivery_id="6f9619ff8b86d011b42d00cf4fc964ff",
            outcome=DeliveryOutcome.SENT,
        ),
        SessionEnded(**common, seq=8, reason="participant_left"),
    ]
