"""What a job process (or the local run) sets up once: config, telemetry, the bus.

livekit-agents runs each call in a job process it spawns, so nothing built in the parent
process can be shared with a job: each process loads the configuration from the
environment, installs telemetry, and connects to NATS lazily, on its first publish, so a
NATS outage at start delays events instead of failing the call.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from livekit.agents import NOT_GIVEN, AgentSession, TurnHandlingOptions
from livekit.agents import telemetry as lk_telemetry

from avatar_agent.avatars import Avatar, AvatarCatalog
from avatar_agent.config import AgentSettings
from avatar_agent.conversation import Conversation
from avatar_agent.delivery import PublishData, RoomDeliveries
from avatar_agent.lifecycle import dispatch_fields
from avatar_agent.outbox import EventOutbox
from avatar_agent.providers import build_models, connect_options
from avatar_shared.bus import Bus
from avatar_shared.config import DeliverySettings, NatsSettings, load
from avatar_shared.events import Event
from avatar_shared.telemetry import Telemetry, setup_telemetry

log = logging.getLogger(__name__)

SERVICE_NAME = "avatar-agent"
AGENT_IDENTITY = "agent"


@dataclass(frozen=True)
class Runtime:
    settings: AgentSettings
    nats: NatsSettings
    delivery: DeliverySettings
    catalog: AvatarCatalog
    telemetry: Telemetry


@functools.cache
def runtime() -> Runtime:
    """This process's configuration and telemetry (raises ConfigError when invalid)."""
    settings = load(AgentSettings)
    catalog = AvatarCatalog.load(settings.avatars_file)
    telemetry = setup_telemetry(SERVICE_NAME)
    if telemetry.tracer_provider is not None:
        # The framework's spans (turns, LLM, TTS) join our traces; our publish spans
        # are children of whatever framework span emitted the event.
        lk_telemetry.set_tracer_provider(
            telemetry.tracer_provider, allow_pii=settings.trace_content
        )
    return Runtime(settings, load(NatsSettings), load(DeliverySettings), catalog, telemetry)


class LazyBus:
    """A :class:`Bus` that connects in the background, from the first publish on.

    nats-py keeps retrying a first connection for as long as NATS is down; that attempt
    runs in its own task, and each publish waits for it only as long as the caller
    allows (the outbox bounds every attempt), so a NATS outage never blocks a call.
    """

    def __init__(self, settings: NatsSettings, *, name: str) -> None:
        self._settings = settings
        self._name = name
        self._connecting: asyncio.Task[Bus] | None = None

    async def publish(self, event: Event) -> object:
        return await (await self.get()).publish(event)

    def connect_in_background(self) -> None:
        """Start connecting (again, after a failed attempt) without waiting."""
        if self._connecting is None or (
            self._connecting.done() and self._connecting.exception() is not None
        ):
            self._connecting = asyncio.create_task(self._connect(), name="nats-connect")

    @property
    def connected(self) -> bool:
        task = self._connecting
        if task is None or not task.done() or task.cancelled() or task.exception():
            return False
        return task.result().connected

    async def get(self) -> Bus:
        self.connect_in_background()
        assert self._connecting is not None
        return await asyncio.shield(self._connecting)

    async def _connect(self) -> Bus:
        # No provisioning: the actions service creates the events stream; the agent's
        # identity may only publish into it (avatar_shared.bus.identities).
        return await Bus.connect(self._settings, name=self._name, identity=AGENT_IDENTITY)

    async def close(self) -> None:
        task, self._connecting = self._connecting, None
        if task is None:
            return
        if not task.done():
            task.cancel()
        try:
            bus = await task
        except (asyncio.CancelledError, Exception):
            return
        await bus.close()


def avatar_id_from_metadata(metadata: str) -> str | None:
    """The avatar id the token service put in the dispatch metadata, if any."""
    avatar_id = dispatch_fields(metadata).get("avatar_id")
    return avatar_id if isinstance(avatar_id, str) else None


def start_conversation(
    rt: Runtime,
    avatar: Avatar,
    bus: LazyBus,
    *,
    room: str,
    job: str,
    publish_data: PublishData,
    hears_user: bool = True,
    dispatch_metadata: str = "",
    end_room: Callable[[], Awaitable[None]] | None = None,
) -> Conversation:
    """Build the session for one call; the caller starts it (``Conversation.start``).

    Call it inside livekit-agents' HTTP context (a job's, or the local run's). The session's
    limits come from the dispatch metadata (the agent's settings where it has none); at
    a limit the conversation ends and calls ``end_room``. With
    ``ACTIONS_DELIVERY=agent`` the conversation also publishes the room's
    ``AVATAR_UPDATE`` packets through ``publish_data`` (:mod:`avatar_agent.delivery`).
    """
    settings = rt.settings
    models = build_models(settings, avatar, hears_user=hears_user)
    options = connect_options(settings)
    # Resuming after a false interruption pauses the audio output; a session that cannot
    # hear the user has none to resume from (and the local run's speaker cannot pause).
    turns: TurnHandlingOptions = {"interruption": {"resume_false_interruption": hears_user}}
    session: AgentSession[None] = AgentSession(
        llm=models.llm,
        tts=models.tts,
        stt=models.stt if models.stt is not None else NOT_GIVEN,  # a chat LLM's ears
        conn_options=options,
        turn_handling=turns,
    )
    outbox = EventOutbox(
        bus,
        room=room,
        avatar_id=avatar.id,
        max_queue=settings.events_queue,
        max_wait=settings.events_max_wait_seconds,
    )
    deliveries = (
        RoomDeliveries(bus, room=room, job=job, publish_data=publish_data, outbox=outbox)
        if rt.delivery.delivery == "agent"
        else None
    )
    conversation = Conversation(
        session,
        avatar,
        outbox,
        agent_name=settings.name,
        tts_keeps_emotions=models.tts_keeps_emotions,
        text=settings.text_limits,
        deliveries=deliveries,
        models=models,
        limits=settings.session_limits.from_metadata(dispatch_metadata),
        end_room=end_room,
    )
    return conversation
