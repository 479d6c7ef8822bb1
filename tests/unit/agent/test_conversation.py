"""How livekit-agents' session events map to our contract (no NATS: a recording bus)."""

from __future__ import annotations

from livekit.agents import AgentSession
from livekit.agents.voice.events import (
    AgentStateChangedEvent,
    CloseEvent,
    CloseReason,
    UserStateChangedEvent,
)

from avatar_agent.avatars import AvatarCatalog
from avatar_agent.conversation import Conversation
from avatar_agent.demo import DemoLLM, DemoTTS
from avatar_agent.outbox import EventOutbox
from avatar_shared.events import AgentStateChanged, Event, SessionEnded, UserStateChanged


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    async def publish(self, event: Event) -> None:
        self.events.append(event)


async def test_states_and_the_end_of_a_session_become_events() -> None:
    avatar = AvatarCatalog.parse({"avatars": {"ava": {"name": "Ava"}}}).get("ava")
    assert avatar is not None
    session: AgentSession[None] = AgentSession(llm=DemoLLM(), tts=DemoTTS())
    bus = Recorder()
    outbox = EventOutbox(bus, room="room-1", avatar_id="ava")
    conversation = Conversation(
        session, avatar, outbox, agent_name="avatar-agent", tts_keeps_emotions=False
    )
    conversation.begin()
    session.emit(
        "user_state_changed", UserStateChangedEvent(old_state="listening", new_state="speaking")
    )
    session.emit(
        "agent_state_changed", AgentStateChangedEvent(old_state="listening", new_state="thinking")
    )
    session.emit("close", CloseEvent(reason=CloseReason.PARTICIPANT_DISCONNECTED, error=None))
    conversation.end("job_shutdown")  # the first reason wins; ended once
    await outbox.aclose()
    assert [type(e) for e in bus.events][1:] == [UserStateChanged, AgentStateChanged, SessionEnded]
    user, agent, ended = bus.events[1:]
    assert isinstance(user, UserStateChanged)
    assert (user.old_state, user.new_state) == ("listening", "speaking")
    assert isinstance(agent, AgentStateChanged)
    assert agent.new_state == "thinking"
    assert isinstance(ended, SessionEnded)
    assert ended.reason == "user_left"
    assert [e.seq for e in bus.events] == [0, 1, 2, 3]


async def test_only_data_the_user_sent_is_a_sign_of_life() -> None:
    """Not the avatar packets the server sends to the room, nor another participant's."""
    avatar = AvatarCatalog.parse({"avatars": {"ava": {"name": "Ava"}}}).get("ava")
    assert avatar is not None
    session: AgentSession[None] = AgentSession(llm=DemoLLM(), tts=DemoTTS())
    outbox = EventOutbox(Recorder(), room="room-1", avatar_id="ava")
    conversation = Conversation(
        session, avatar, outbox, agent_name="avatar-agent", tts_keeps_emotions=False
    )
    signs: list[str] = []
    conversation.user_active = lambda: signs.append("sign")  # type: ignore[method-assign]
    conversation._linked_identity = lambda: "user-1"  # type: ignore[method-assign]
    for sender in (None, "someone-else", "user-1"):
        conversation.data_received(sender)
    assert signs == ["sign"]
    conversation._linked_identity = lambda: None  # type: ignore[method-assign]
    conversation.data_received("user-1")  # not linked yet: nobody's data counts
    assert signs == ["sign"]
    await outbox.aclose()
