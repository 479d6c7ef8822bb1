"""The worker's dispatch decisions: which job requests it accepts, as whom."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from livekit.agents import JobRequest
from livekit.agents.job import JobAcceptArguments
from livekit.protocol import agent, models

from avatar_agent import runtime as runtime_module
from avatar_agent.worker import (
    LOAD_THRESHOLD,
    build_server,
    end_job,
    on_request,
    refused,
    worker_load,
)

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def agent_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("AGENT_AVATARS_FILE", str(ROOT / "deploy" / "local" / "avatars.toml"))
    monkeypatch.setenv("AGENT_LLM", "demo")
    monkeypatch.setenv("AGENT_TTS", "demo")
    monkeypatch.setenv("AGENT_NAME", "concierge")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    monkeypatch.setenv("LIVEKIT_URL", "ws://127.0.0.1:7880")
    monkeypatch.setenv("LIVEKIT_API_KEY", "devkey")
    monkeypatch.setenv("LIVEKIT_API_SECRET", "a-long-and-entirely-fake-livekit-secret-0123")
    runtime_module.runtime.cache_clear()
    yield
    runtime_module.runtime.cache_clear()


async def decide(metadata: str) -> tuple[str, JobAcceptArguments | None]:
    outcome: list[tuple[str, JobAcceptArguments | None]] = []

    async def on_reject(terminate: bool) -> None:
        outcome.append(("rejected", None))

    async def on_accept(args: JobAcceptArguments) -> None:
        outcome.append(("accepted", args))

    job = agent.Job(
        id="AJ_1",
        room=models.Room(name="avatar-demo-avatar-x1"),
        metadata=metadata,
        agent_name="concierge",
    )
    await on_request(JobRequest(job=job, on_reject=on_reject, on_accept=on_accept))
    assert len(outcome) == 1
    return outcome[0]


async def test_a_job_for_a_known_avatar_is_accepted_as_that_avatar() -> None:
    verdict, args = await decide('{"avatar_id":"demo-avatar"}')
    assert verdict == "accepted"
    assert args is not None
    assert args.name == "Ava"
    assert args.attributes == {"avatar.id": "demo-avatar"}


@pytest.mark.parametrize("metadata", ['{"avatar_id":"someone-else"}', "", "{broken"])
async def test_a_job_without_a_known_avatar_is_rejected(metadata: str) -> None:
    verdict, _ = await decide(metadata)
    assert verdict == "rejected"


async def test_at_a_limit_the_job_ends_even_when_livekit_never_deletes_the_room() -> None:
    ended: list[str] = []
    never = asyncio.Event()

    async def hanging_delete() -> None:
        await never.wait()

    async with asyncio.timeout(2):
        await end_job(hanging_delete, ended.append, within=0.1)
    assert ended == ["session limit"]


async def test_at_a_limit_the_room_is_deleted_before_the_job_ends() -> None:
    order: list[str] = []

    async def delete() -> None:
        order.append("deleted")

    await end_job(delete, lambda reason: order.append(reason))
    assert order == ["deleted", "session limit"]


class FakeContext:
    """What :func:`refused_late` uses of a JobContext."""

    def __init__(self, metadata: str, created: int) -> None:
        self.job = agent.Job(
            id="AJ_2",
            room=models.Room(name="avatar-demo-avatar-x2", creation_time=created),
            metadata=metadata,
        )
        self.calls: list[str] = []

    async def delete_room(self) -> None:
        self.calls.append("delete_room")

    def shutdown(self, reason: str = "") -> None:
        self.calls.append(f"shutdown: {reason}")


class Stored:
    """The bus, as far as the question "has this room's session ended?" goes."""

    def __init__(self, ended: set[str]) -> None:
        self.ended = ended
        self.asked: list[str] = []

    async def get(self) -> Stored:
        return self

    async def last_on(self, stream: str, subject: str, *, direct: bool = False) -> bytes | None:
        assert (stream, direct) == ("AVATAR_EVENTS", True)
        self.asked.append(subject)
        return b"{}" if subject.rsplit(".", 1)[-1] in self.ended else None


async def test_a_room_created_after_the_start_window_is_deleted_without_a_session() -> None:
    now = int(time.time())
    late = FakeContext(json.dumps({"avatar_id": "demo-avatar", "start_by": now - 600}), now)
    assert await refused(late, Stored(set()))  # type: ignore[arg-type]
    assert late.calls == ["delete_room", "shutdown: session limit"]

    in_time = FakeContext(json.dumps({"avatar_id": "demo-avatar", "start_by": now + 60}), now)
    assert not await refused(in_time, Stored(set()))  # type: ignore[arg-type]
    assert in_time.calls == []


async def test_a_generated_room_whose_session_ended_gets_no_second_one() -> None:
    now = int(time.time())
    metadata = {"avatar_id": "demo-avatar", "start_by": now + 60, "single_session": True}
    again = FakeContext(json.dumps(metadata), now)  # room avatar-demo-avatar-x2
    bus = Stored({"avatar-demo-avatar-x2"})
    assert await refused(again, bus)  # type: ignore[arg-type]
    assert again.calls == ["delete_room", "shutdown: session limit"]
    assert bus.asked == ["avatars.v1.agent.session_ended.avatar-demo-avatar-x2"]

    first = FakeContext(json.dumps(metadata), now)
    assert not await refused(first, Stored(set()))  # type: ignore[arg-type]
    # a named room may hold one session after another: not even asked
    shared = FakeContext(json.dumps(metadata | {"single_session": False}), now)
    quiet = Stored({"avatar-demo-avatar-x2"})
    assert not await refused(shared, quiet)  # type: ignore[arg-type]
    assert quiet.asked == []


async def test_without_an_answer_from_nats_the_session_goes_ahead() -> None:
    class Away:
        async def get(self) -> None:
            raise ConnectionError("nats: no servers available")

    now = int(time.time())
    metadata = {"avatar_id": "demo-avatar", "start_by": now + 60, "single_session": True}
    ctx = FakeContext(json.dumps(metadata), now)
    assert not await refused(ctx, Away())  # type: ignore[arg-type]
    assert ctx.calls == []


class _Server:
    def __init__(self, jobs: int) -> None:
        self.active_jobs = [object()] * jobs


@pytest.mark.parametrize(
    ("jobs", "cpu", "full"),
    [
        (0, 0.1, False),
        (3, 0.1, False),  # calls wait on their providers: little CPU
        (4, 0.1, True),  # AGENT_MAX_JOBS reached, whatever the CPU
        (5, 0.1, True),
        (0, 0.75, True),  # the CPU alone, as livekit-agents measures it
    ],
)
def test_a_worker_is_full_at_its_job_limit_or_its_cpu(jobs: int, cpu: float, full: bool) -> None:
    load = worker_load(4, cpu=lambda server: cpu)
    assert (load(_Server(jobs)) >= LOAD_THRESHOLD) is full  # type: ignore[arg-type]


def test_the_server_reports_its_load_by_jobs_and_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_MAX_JOBS", "2")
    server = build_server()
    assert server.load_fnc is not None
    assert server._load_threshold == LOAD_THRESHOLD
    assert server.load_fnc(_Server(2)) >= LOAD_THRESHOLD  # type: ignore[call-arg]
