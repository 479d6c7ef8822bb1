"""A session's limits, enforced by the agent on a real ``AgentSession`` (demo providers,
as `make run` has them): at its maximum length, or once the user has been away for the
inactivity timeout, the agent says its closing line, reports ``session_ended`` with the
reason and deletes the room through LiveKit's API (a double that decodes the real
``DeleteRoomRequest`` and checks the token's ``roomCreate`` grant)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
from livekit import api
from livekit.agents import AgentSession
from nats.js import JetStreamContext

from avatar_agent.avatars import AvatarCatalog
from avatar_agent.conversation import Conversation
from avatar_agent.demo import DemoLLM, DemoTTS
from avatar_agent.lifecycle import SessionLimits
from avatar_agent.local_io import PacedAudioOutput, TranscriptOutput
from avatar_agent.outbox import EventOutbox
from avatar_shared.bus import Bus
from avatar_shared.events import SessionEnded
from tests.integration.agent.test_providers import read_events
from tests.support.livekit_server import LiveKitDouble, running_livekit

pytestmark = pytest.mark.timeout(90)

KEY, SECRET = "lifecycle-key", "lifecycle-secret-that-is-long-enough-0123456789"
CLOSING = "Time is up, goodbye!"
AVATAR = AvatarCatalog.parse(
    {"avatars": {"ava": {"name": "Ava", "closing_line": CLOSING, "actions": {"nod": "a nod"}}}}
).get("ava")
REPLY = "This is a reply long enough to take its time being spoken. [action:nod]"  # ~2.8 s


@pytest.fixture
async def livekit() -> AsyncIterator[LiveKitDouble]:
    async with running_livekit(LiveKitDouble(keys={KEY: SECRET})) as double:
        yield double


@dataclass
class Call:
    conversation: Conversation
    transcript: list[str]
    ended: asyncio.Event


async def call(bus: Bus, room: str, livekit: LiveKitDouble, limits: SessionLimits) -> Call:
    assert AVATAR is not None
    session: AgentSession[None] = AgentSession(
        llm=DemoLLM([REPLY], chunk_delay=0.002), tts=DemoTTS(seconds_per_char=0.04)
    )
    session.output.audio = PacedAudioOutput()
    transcript: list[str] = []
    session.output.transcription = TranscriptOutput(transcript.append)
    ended = asyncio.Event()

    async def end_room() -> None:
        lk = api.LiveKitAPI(livekit.url, KEY, SECRET)
        try:
            await lk.room.delete_room(api.DeleteRoomRequest(room=room))
        finally:
            await lk.aclose()
        ended.set()

    conversation = Conversation(
        session,
        AVATAR,
        EventOutbox(bus, room=room, avatar_id=AVATAR.id),
        agent_name="test-agent",
        tts_keeps_emotions=False,
        limits=limits,
        end_room=end_room,
    )
    await conversation.start()
    return Call(conversation, transcript, ended)


async def hang_up(c: Call) -> None:
    await c.conversation.session.aclose()
    await c.conversation.finish("test over")


async def test_at_its_maximum_length_the_session_says_goodbye_and_the_room_is_deleted(
    bus: Bus, js: JetStreamContext, room: str, livekit: LiveKitDouble
) -> None:
    c = await call(bus, room, livekit, SessionLimits(4.0, 60.0))
    started = time.monotonic()
    await c.conversation.session.generate_reply(user_input="hi")
    while not c.ended.is_set():  # the user keeps talking: only the length can end it
        c.conversation.user_active()
        await asyncio.sleep(0.2)
    elapsed = time.monotonic() - started
    await hang_up(c)
    assert 4.0 <= elapsed < 4.0 + 6  # then the closing line (about 1 s) and the deletion
    assert c.transcript[-1] == CLOSING
    assert livekit.deleted_rooms == [room]
    ended = [e for e in await read_events(js, room) if isinstance(e, SessionEnded)]
    assert [e.reason for e in ended] == ["max_duration"]


async def test_a_user_who_stays_silent_is_inactive_counted_from_the_end_of_the_reply(
    bus: Bus, js: JetStreamContext, room: str, livekit: LiveKitDouble
) -> None:
    inactivity = 1.5
    c = await call(bus, room, livekit, SessionLimits(120.0, inactivity))
    await c.conversation.session.generate_reply(user_input="hi")  # longer than 1.5 s
    await asyncio.sleep(1.0)
    await c.conversation.session.generate_reply(user_input="and?")  # a sign of life
    reply_done = time.monotonic()
    async with asyncio.timeout(20):
        await c.ended.wait()
    silent = time.monotonic() - reply_done
    await hang_up(c)
    assert inactivity <= silent < inactivity + 4  # then the closing line
    assert c.transcript[-1] == CLOSING
    assert livekit.deleted_rooms == [room]
    ended = [e for e in await read_events(js, room) if isinstance(e, SessionEnded)]
    assert [e.reason for e in ended] == ["inactive"]


async def test_a_deletion_without_the_room_create_grant_is_refused(livekit: LiveKitDouble) -> None:
    token = (
        api.AccessToken(KEY, SECRET)
        .with_grants(api.VideoGrants(room_admin=True, room="r"))
        .to_jwt()
    )
    async with aiohttp.ClientSession() as http:
        response = await http.post(
            f"{livekit.url}/twirp/livekit.RoomService/DeleteRoom",
            data=api.DeleteRoomRequest(room="r").SerializeToString(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/protobuf"},
        )
        assert response.status == 403
        assert "roomCreate" in (await response.json())["msg"]
    assert livekit.deleted_rooms == []
