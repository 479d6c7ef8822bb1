"""Run one scripted conversation in this process, without LiveKit: ``make run``'s agent.

The session is a real ``AgentSession`` with the configured providers (the demo ones when
there are no keys), talking to a paced speaker instead of a room and fed typed user turns,
so it needs no speech-to-text. It runs inside livekit-agents' HTTP context, as a job does,
which the Cartesia and OpenAI plugins take their HTTP session from.
The clean transcript is logged, and every event goes to NATS as in a room, so the actions
service (dry run) logs the packets it would send. Afterwards the process stays up, healthy,
until SIGTERM.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import uuid
from collections.abc import Sequence

from aiohttp import web
from livekit.agents.utils import http_context

from avatar_agent.avatars import Avatar
from avatar_agent.delivery import PublishData
from avatar_agent.local_io import PacedAudioOutput, TranscriptOutput
from avatar_agent.probes import Probes
from avatar_agent.runtime import LazyBus, Runtime, runtime, start_conversation

log = logging.getLogger(__name__)

USER_TURNS = (
    "Hi! Who are you?",
    "How do you work without any API keys?",
    "Show me how your tags are handled.",
)


async def _health(_: web.Request) -> web.Response:
    return web.Response(text="OK")


async def run(*, pause: float = 1.0) -> None:
    rt = runtime()
    avatar_id = rt.settings.local_avatar or rt.catalog.ids[0]
    avatar = rt.catalog.get(avatar_id)
    if avatar is None:
        raise SystemExit(f"error: AGENT_LOCAL_AVATAR {avatar_id!r} is not in the avatars file")
    app = web.Application()
    app.add_routes([web.get("/", _health), web.get("/healthz", _health)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, rt.settings.host, rt.settings.port).start()

    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)

    room = f"local-{uuid.uuid4().hex[:8]}"
    bus = LazyBus(rt.nats, name=f"{rt.settings.name}:local")
    probes = Probes(bus)
    await probes.start(rt.settings.host, rt.settings.probe_port)

    async def publish_data(payload: bytes, topic: str, destinations: Sequence[str]) -> None:
        log.info(
            "would publish_data (no LiveKit in the local run)",
            extra={
                "room": room,
                "payload": payload.decode(),
                "reliable": True,
                "topic": topic,
                "destinations": list(destinations),
            },
        )

    try:
        async with http_context.open():
            await _converse(rt, avatar, bus, room, publish_data, stop, pause)
    finally:
        await probes.stop()
        await bus.close()
        await runner.cleanup()


async def _converse(
    rt: Runtime,
    avatar: Avatar,
    bus: LazyBus,
    room: str,
    publish_data: PublishData,
    stop: asyncio.Event,
    pause: float,
) -> None:
    async def end_room() -> None:
        log.info("would delete the room (no LiveKit in the local run)", extra={"room": room})

    conversation = start_conversation(
        rt,
        avatar,
        bus,
        room=room,
        job="local",
        publish_data=publish_data,
        hears_user=False,
        end_room=end_room,
    )
    session = conversation.session
    session.output.audio = PacedAudioOutput()
    session.output.transcription = TranscriptOutput(
        lambda text: log.info("agent: %s", text, extra={"room": room})
    )
    log.info(
        "local conversation (no LiveKit): %s as %s, events on NATS for room %s",
        avatar.id,
        avatar.name,
        room,
        extra={"llm": session.llm and session.llm.label, "tts": session.tts and session.tts.label},
    )
    try:
        await conversation.start()
        for line in USER_TURNS:
            if stop.is_set():
                break
            log.info("user: %s", line, extra={"room": room})
            await session.generate_reply(user_input=line)
            await asyncio.sleep(pause)
        log.info("scripted conversation done; serving health until stopped")
        await stop.wait()
    finally:
        await session.aclose()
        await conversation.finish("local run stopped")
