"""A generated room's session happens once: the agent learns from the bus, as the agent
identity and through the one read its permissions allow, that a room's session ended."""

from __future__ import annotations

from avatar_agent.runtime import LazyBus
from avatar_agent.worker import session_over
from avatar_shared.bus import Bus
from avatar_shared.events import SessionEnded
from tests.support.nats_server import NatsServer

SINGLE = '{"avatar_id": "ava", "single_session": true}'


async def test_the_agent_reads_whether_a_rooms_session_ended(
    bus: Bus, nats_server: NatsServer, room: str
) -> None:
    agent = LazyBus(nats_server.settings("agent"), name="session-over-test")
    try:
        assert not await session_over(agent, room, SINGLE)  # nothing yet
        await bus.publish(SessionEnded(room=room, seq=9, reason="max_duration"))
        assert await session_over(agent, room, SINGLE)  # the token joined again
        assert not await session_over(agent, room + "-other", SINGLE)
        assert not await session_over(agent, room, '{"avatar_id": "ava"}')  # a named room
    finally:
        await agent.close()
