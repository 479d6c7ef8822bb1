"""The LiveKit worker: explicit dispatch by agent name, one conversation per job.

The token service dispatches ``AGENT_NAME`` into each new room with
``{"avatar_id": ...}`` as dispatch metadata. A request for an avatar the avatars file
does not know is rejected before joining. The worker's HTTP server answers ``GET /`` on
``AGENT_PORT`` (health) and ``GET /worker``; ``GET /readyz`` on ``AGENT_PROBE_PORT``
says whether NATS answers and LiveKit has registered the worker (``probes.py``). On
SIGTERM the worker stops taking jobs and lets running calls finish for up to
``AGENT_DRAIN_TIMEOUT_SECONDS``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from livekit.agents import AgentServer, JobContext, JobRequest, cli
from livekit.agents.worker import _DefaultLoadCalc
from opentelemetry import metrics

from avatar_agent.delivery import BusSource, publish_from
from avatar_agent.lifecycle import single_session, started_too_late
from avatar_agent.probes import Probes
from avatar_agent.runtime import LazyBus, avatar_id_from_metadata, runtime, start_conversation
from avatar_shared import semconv, subjects
from avatar_shared.config import LiveKitSettings, load
from avatar_shared.events import SessionEnded

log = logging.getLogger(__name__)
_refused = metrics.get_meter(semconv.INSTRUMENTATION_NAME).create_counter(
    semconv.METRIC_AGENT_SESSIONS_REFUSED,
    description="Jobs that started no session, by reason",
)


async def on_request(request: JobRequest) -> None:
    rt = runtime()
    avatar_id = avatar_id_from_metadata(request.job.metadata)
    avatar = rt.catalog.get(avatar_id or "")
    if avatar is None:
        log.warning(
            "job rejected: unknown avatar",
            extra={"avatar_id": avatar_id, "job_id": request.id, "room": request.room.name},
        )
        await request.reject()
        return
    await request.accept(name=avatar.name, attributes={"avatar.id": avatar.id})


#: How long the job waits for LiveKit to delete the room at a session limit.
DELETE_ROOM_SECONDS = 10.0


async def end_job(
    delete_room: Callable[[], Awaitable[object]],
    shutdown: Callable[[str], None],
    within: float = DELETE_ROOM_SECONDS,
) -> None:
    """At a session limit: delete the room (every participant is disconnected), then end
    the job, also when LiveKit does not answer in time: the agent leaves either way."""
    try:
        async with asyncio.timeout(within):
            await asyncio.shield(delete_room())
    except TimeoutError:
        log.warning("LiveKit did not delete the room within %.0f s; leaving it", within)
    shutdown("session limit")


#: How long a job waits to learn whether its room's session has ended.
SESSION_CHECK_SECONDS = 5.0


async def session_over(bus: BusSource, room: str, metadata: str) -> bool:
    """Whether a generated room (``single_session`` in the dispatch) has had its session
    already: a ``session_ended`` for it is on the bus, so its token joined again after
    the agent deleted the room at a limit. NATS not answering in time lets the session
    go ahead (the token's start window still bounds it)."""
    if not single_session(metadata):
        return False
    subject = subjects.subject_for(subjects.AGENT, SessionEnded.model_fields["type"].default, room)
    try:
        async with asyncio.timeout(SESSION_CHECK_SECONDS):
            ended = await (await bus.get()).last_on(subjects.EVENTS_STREAM, subject, direct=True)
    except Exception as exc:  # NATS away or refusing
        log.warning("could not learn whether the room's session ended: %s", exc)
        return False
    return ended is not None


async def refused(ctx: JobContext, bus: BusSource) -> bool:
    """A room created after its token's start window, or a generated room whose session
    has ended, gets no session: the room is deleted (the user is disconnected) and the
    job ends before anything is started."""
    created = ctx.job.room.creation_time or time.time()
    if started_too_late(ctx.job.metadata, created):
        reason = "start_window_passed"
    elif await session_over(bus, ctx.job.room.name, ctx.job.metadata):
        reason = "session_over"
    else:
        return False
    log.warning(
        "no session in this room (%s): the room is deleted",
        reason,
        extra={"room": ctx.job.room.name, "job_id": ctx.job.id},
    )
    _refused.add(1, {semconv.REASON: reason})
    await end_job(ctx.delete_room, ctx.shutdown)
    return True


async def entrypoint(ctx: JobContext) -> None:
    rt = runtime()
    avatar_id = avatar_id_from_metadata(ctx.job.metadata)
    avatar = rt.catalog.get(avatar_id or "")
    if avatar is None:  # on_request rejects these; a forced dispatch may still arrive
        log.error("job without a known avatar id in its metadata", extra={"job_id": ctx.job.id})
        ctx.shutdown("unknown avatar")
        return
    bus = LazyBus(rt.nats, name=f"{rt.settings.name}:{ctx.job.id}")
    if await refused(ctx, bus):
        await bus.close()
        return

    async def end_room() -> None:
        await end_job(ctx.delete_room, ctx.shutdown)

    conversation = start_conversation(
        rt,
        avatar,
        bus,
        room=ctx.room.name,
        job=ctx.job.id,
        publish_data=publish_from(ctx.room.local_participant),
        dispatch_metadata=ctx.job.metadata,
        end_room=end_room,
    )
    ctx.room.on(
        "data_received",
        lambda packet: conversation.data_received(
            packet.participant.identity if packet.participant is not None else None
        ),
    )

    async def finish(reason: str) -> None:
        await conversation.finish(reason or "job_shutdown")
        await bus.close()

    ctx.add_shutdown_callback(finish)
    await conversation.start(ctx.room)
    if avatar.greeting:
        conversation.session.generate_reply(instructions=avatar.greeting)


#: The load at which LiveKit sends a worker no more jobs (livekit-agents' production
#: default, set here so that :func:`worker_load` can scale the job count to it).
LOAD_THRESHOLD = 0.7


def worker_load(
    max_jobs: int, cpu: Callable[[AgentServer], float] = _DefaultLoadCalc.get_load
) -> Callable[[AgentServer], float]:
    """The worker's load as LiveKit reads it: its CPU's (livekit-agents' own measure), or
    its share of ``max_jobs``, whichever is higher; the share reaches the threshold at
    ``max_jobs`` jobs. Calls wait on their providers and use little CPU, so CPU alone
    lets a worker take calls until the pod runs out of memory (each is a process)."""

    def load(server: AgentServer) -> float:
        return max(cpu(server), LOAD_THRESHOLD * len(server.active_jobs) / max_jobs)

    return load


def build_server() -> AgentServer:
    rt = runtime()
    livekit = load(LiveKitSettings)
    registered: list[str] = []  # the worker id, once LiveKit has registered the worker
    server = AgentServer(
        ws_url=livekit.url,
        api_key=livekit.api_key,
        api_secret=livekit.api_secret.get_secret_value(),
        host=rt.settings.host,
        port=rt.settings.port,
        drain_timeout=rt.settings.drain_timeout_seconds,
        load_fnc=worker_load(rt.settings.max_jobs),
        load_threshold=LOAD_THRESHOLD,
    )
    server.rtc_session(entrypoint, agent_name=rt.settings.name, on_request=on_request)
    probes = Probes(
        LazyBus(rt.nats, name=f"{rt.settings.name}:probes"),
        lambda: None if registered else "not registered with LiveKit",
    )
    tasks: set[asyncio.Task[None]] = set()

    def on_started() -> None:
        task = asyncio.get_running_loop().create_task(
            probes.start(rt.settings.host, rt.settings.probe_port)
        )
        tasks.add(task)  # referenced until done
        task.add_done_callback(tasks.discard)

    server.on("worker_started", on_started)
    server.on("worker_registered", lambda worker_id, _info: registered.append(worker_id))
    return server


def run() -> None:
    """Run the worker with livekit-agents' CLI (``start``: production mode, JSON logs)."""
    cli.run_app(build_server())
