"""The agent with real provider plugins against local doubles of their servers.

A real ``AgentSession`` built as a job or the local run builds it (``start_conversation``,
inside livekit-agents' HTTP context), with livekit-plugins-openai talking to an
OpenAI-compatible chat server double or an OpenAI Realtime API double (the default
``AGENT_LLM=realtime``) and livekit-plugins-cartesia to a Cartesia WebSocket double,
reporting to the real NATS. What is checked is what the user hears
and what the bus says, when the providers work and when they fail.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from livekit.agents.utils import http_context
from nats.js import JetStreamContext, api

from avatar_agent.avatars import AvatarCatalog
from avatar_agent.config import AgentSettings
from avatar_agent.conversation import Conversation
from avatar_agent.local_io import PacedAudioOutput, TranscriptOutput
from avatar_agent.runtime import LazyBus, Runtime, start_conversation
from avatar_shared import semconv, subjects
from avatar_shared.bus import Bus
from avatar_shared.config import DeliverySettings
from avatar_shared.events import Event, SpeechDone, TagParsed, decode_event
from avatar_shared.telemetry import Telemetry
from tests.support import cartesia, openai_compatible, openai_realtime
from tests.support.cartesia import CartesiaDouble
from tests.support.nats_server import NatsServer
from tests.support.openai_compatible import OpenAICompatibleDouble
from tests.support.openai_realtime import OpenAIRealtimeDouble

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[3]
FALLBACK = "Sorry, say that again?"
CATALOG = AvatarCatalog.parse(
    {
        "avatars": {
            "ava": {
                "name": "Ava",
                "emotions": ["happy"],
                "actions": {"wave_hand": "a wave", "nod": "a nod"},
                "fallback_line": FALLBACK,
            }
        }
    }
)


@pytest.fixture(autouse=True)
def events_stream(bus: Bus) -> None:
    """The events stream exists (the actions service provisions it in a deployment)."""


@pytest.fixture
async def llm_server() -> AsyncIterator[OpenAICompatibleDouble]:
    async with openai_compatible.running(OpenAICompatibleDouble()) as double:
        yield double


@pytest.fixture
async def realtime_server() -> AsyncIterator[OpenAIRealtimeDouble]:
    async with openai_realtime.running(OpenAIRealtimeDouble()) as double:
        yield double


@pytest.fixture
async def tts_server() -> AsyncIterator[CartesiaDouble]:
    async with cartesia.running(CartesiaDouble()) as double:
        yield double


@dataclass
class Talk:
    events: list[Event]
    transcript: list[str]
    elapsed: float
    failed: dict[tuple[tuple[str, str | bool | int], ...], int]  # avatar.agent.replies.failed

    def failures(self, stage: str, kind: str) -> int:
        return sum(
            n
            for key, n in self.failed.items()
            if (semconv.STAGE, stage) in key and ("kind", kind) in key
        )

    def done(self) -> list[SpeechDone]:
        return [e for e in self.events if isinstance(e, SpeechDone)]


async def talk(
    nats_server: NatsServer,
    js: JetStreamContext,
    room: str,
    llm: OpenAICompatibleDouble | OpenAIRealtimeDouble,
    tts: CartesiaDouble | None,
    *,
    turns: Sequence[str] = ("hi",),
    **settings: Any,
) -> Talk:
    values: dict[str, Any] = {
        "avatars_file": ROOT / "deploy" / "local" / "avatars.toml",
        "tts": "demo",
        "provider_timeout_seconds": 2.0,
        "provider_retries": 1,
    }
    if isinstance(llm, OpenAIRealtimeDouble):
        values |= {"llm": "realtime", "realtime_base_url": llm.base_url}
        values["OPENAI_API_KEY"] = llm.api_key
    else:
        values |= {"llm": "openai-compatible", "llm_base_url": llm.base_url}
        values["llm_model"] = llm.model
    if tts is not None:
        values |= {"tts": "cartesia", "tts_base_url": tts.base_url}
        values["CARTESIA_API_KEY"] = tts.api_key
    rt = Runtime(
        AgentSettings(**(values | settings)),
        nats_server.settings("agent"),
        DeliverySettings(),
        CATALOG,
        Telemetry(),
    )
    avatar = CATALOG.get("ava")
    assert avatar is not None
    bus = LazyBus(rt.nats, name="provider-test")

    async def no_data(payload: bytes, topic: str, destinations: Sequence[str]) -> None:
        raise AssertionError("no delivery in these tests")

    transcript: list[str] = []
    started = time.monotonic()
    async with http_context.open():
        conversation = start_conversation(
            rt, avatar, bus, room=room, job="test", publish_data=no_data, hears_user=False
        )
        session = conversation.session
        session.output.audio = PacedAudioOutput(speed=8.0)
        session.output.transcription = TranscriptOutput(transcript.append)
        await conversation.start()
        for line in turns:
            await session.generate_reply(user_input=line)
        await settle(conversation)
        elapsed = time.monotonic() - started
        await session.aclose()
        await conversation.finish("test over")
    await bus.close()
    failed = conversation.agent.failures.counter.totals()
    return Talk(await read_events(js, room), transcript, elapsed, failed)


async def settle(conversation: Conversation) -> None:
    """Wait until no speech is running (a fallback line may follow a failed reply)."""
    async with asyncio.timeout(30):
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < 0.5:
            await asyncio.sleep(0.05)
            if conversation.session.current_speech is not None:
                quiet_since = time.monotonic()


async def read_events(js: JetStreamContext, room: str) -> list[Event]:
    sub = await js.pull_subscribe(
        subjects.room_filter(room),
        stream=subjects.EVENTS_STREAM,
        config=api.ConsumerConfig(deliver_policy=api.DeliverPolicy.ALL),
    )
    events: list[Event] = []
    async with asyncio.timeout(20):
        while not events or events[-1].type != "session_ended":
            for msg in await sub.fetch(batch=100, timeout=5):
                event = decode_event(msg.data)
                assert event is not None
                events.append(event)
                await msg.ack()
    await sub.unsubscribe()
    return events


def assert_heard_without_tags(run: Talk, tts: CartesiaDouble) -> None:
    """The first reply was said whole, no tag reached the voice or the transcript, its
    tags are on the bus, and it did not fail."""
    spoken = " ".join(tts.spoken())
    assert "Hello from your own model!" in spoken
    assert "action" not in spoken
    assert "[" not in spoken
    assert all("action" not in line and "emotion" not in line for line in run.transcript)
    assert [e.name for e in run.events if isinstance(e, TagParsed)] == ["happy", "wave_hand"]
    assert [d.failure for d in run.done()] == [None]


async def test_the_reply_is_streamed_spoken_through_cartesia_and_reported(
    nats_server: NatsServer,
    js: JetStreamContext,
    room: str,
    llm_server: OpenAICompatibleDouble,
    tts_server: CartesiaDouble,
) -> None:
    run = await talk(nats_server, js, room, llm_server, tts_server)
    assert_heard_without_tags(run, tts_server)
    assert '<emotion value="happy"/>' in " ".join(tts_server.spoken())  # Cartesia reads it
    assert tts_server.audio_bytes > 0
    body = llm_server.completions[0].body
    assert body["model"] == "local-model"
    assert body["stream"] is True
    assert body["max_completion_tokens"] == 1000  # a runaway reply is cut (llm_length)


async def test_a_reply_the_llm_never_gives_is_a_failure_and_the_fallback_line_is_said(
    nats_server: NatsServer,
    js: JetStreamContext,
    room: str,
    llm_server: OpenAICompatibleDouble,
    tts_server: CartesiaDouble,
) -> None:
    llm_server.fail_with = [500, 500]  # every attempt (provider_retries=1)
    run = await talk(nats_server, js, room, llm_server, tts_server)
    assert len(llm_server.completions) == 2
    assert [d.failure for d in run.done()] == ["llm_server_error", None]  # then the fallback
    assert tts_server.spoken() == [FALLBACK]
    assert run.failures("llm", "server_error") == 1


async def test_a_stream_cut_mid_reply_is_a_failure_and_nothing_is_said_twice(
    nats_server: NatsServer,
    js: JetStreamContext,
    room: str,
    llm_server: OpenAICompatibleDouble,
    tts_server: CartesiaDouble,
) -> None:
    llm_server.cut_after = 14  # past the wave_hand tag, mid-sentence
    run = await talk(nats_server, js, room, llm_server, tts_server)
    assert len(llm_server.completions) == 1  # no retry once text was sent: no repeats
    assert [d.failure for d in run.done()] == ["llm_connection"]  # heard: no fallback
    assert [e.name for e in run.events if isinstance(e, TagParsed)] == ["happy", "wave_hand"]
    assert FALLBACK not in " ".join(tts_server.spoken())


@pytest.mark.parametrize(
    ("after", "ending", "failure"),
    [
        # before a word: the fallback line follows
        (0, "stop", "llm_empty"),  # a "complete" reply with nothing in it
        (0, "content_filter", "llm_content_filter"),
        (0, "error", "llm_server_error"),  # {"error": ...} streamed, as OpenAI does
        (0, "garbage", "llm_bad_response"),  # a line that is not JSON
        # after some words: heard, so no fallback line
        (5, "length", "llm_length"),  # the provider's token limit
        (5, "content_filter", "llm_content_filter"),
        (5, "error", "llm_server_error"),
        (5, "stop", None),  # a short reply that ended as replies do
    ],
)
async def test_a_reply_the_provider_ends_early_is_a_failure(
    nats_server: NatsServer,
    js: JetStreamContext,
    room: str,
    llm_server: OpenAICompatibleDouble,
    tts_server: CartesiaDouble,
    after: int,
    ending: str,
    failure: str | None,
) -> None:
    llm_server.broken_after, llm_server.broken_with = after, ending
    run = await talk(nats_server, js, room, llm_server, tts_server)
    heard = after > 0
    assert [d.failure for d in run.done()] == [failure] + ([] if heard else [None])
    assert (FALLBACK in tts_server.spoken()) is (not heard)
    if failure is not None:
        assert run.failures("llm", failure.removeprefix("llm_")) == 1


async def test_a_reply_past_its_token_limit_is_cut_when_the_server_ignores_the_limit(
    nats_server: NatsServer,
    js: JetStreamContext,
    room: str,
    llm_server: OpenAICompatibleDouble,
    tts_server: CartesiaDouble,
) -> None:
    llm_server.endless = True  # a local model repeating itself, max_completion_tokens unread
    run = await talk(nats_server, js, room, llm_server, tts_server, max_reply_tokens=50)
    assert llm_server.completions[0].body["max_completion_tokens"] == 50
    assert [d.failure for d in run.done()] == ["llm_length"]
    assert run.failures("llm", "length") == 1
    heard = " ".join(tts_server.spoken())
    assert "Hello from your own model!" in heard
    assert FALLBACK not in heard  # the reply was heard, up to its limit
    assert 0 < len(heard) <= 50 * 8
    hung_up = llm_server.completions[0].hung_up
    assert hung_up is not None  # the agent closed the stream, not left it running
    assert hung_up - llm_server.completions[0].at < 5


async def test_a_long_conversation_sends_the_llm_its_prompt_and_newest_turns(
    nats_server: NatsServer,
    js: JetStreamContext,
    room: str,
    llm_server: OpenAICompatibleDouble,
) -> None:
    turns = [f"question number {n}" for n in range(8)]
    run = await talk(nats_server, js, room, llm_server, None, turns=turns, max_history_chars=400)
    assert [d.failure for d in run.done()] == [None] * len(turns)
    sent = [call.body["messages"] for call in llm_server.completions]
    assert len(sent) == len(turns)
    for messages in sent:
        assert messages[0]["role"] == "system"
        assert "Ava" in messages[0]["content"]
        conversation = messages[1:]
        assert sum(len(m["content"]) for m in conversation) <= 400
    first, last = sent[0][1:], sent[-1][1:]
    assert [m["content"] for m in first] == ["question number 0"]
    assert last[-1] == {"role": "user", "content": "question number 7"}
    assert len(last) < 2 * len(turns) - 1  # older turns were left out
    assert "question number 0" not in str(last)


@pytest.mark.parametrize("stall_after", [0, 5])
async def test_a_stalled_stream_fails_within_the_attempt_timeouts(
    nats_server: NatsServer,
    js: JetStreamContext,
    room: str,
    llm_server: OpenAICompatibleDouble,
    stall_after: int,
) -> None:
    llm_server.stall_after = stall_after
    run = await talk(nats_server, js, room, llm_server, None)
    # before any text: both attempts time out; after some: the first one only
    assert len(llm_server.completions) == (2 if stall_after == 0 else 1)
    assert run.done()[0].failure == "llm_timeout"
    assert run.elapsed < 2 * 2.0 + 6  # two 2 s attempts, then a short fallback line


@pytest.mark.parametrize("drip_after", [0, 5])
async def test_a_stream_that_drips_no_words_fails_within_the_attempt_timeouts(
    nats_server: NatsServer,
    js: JetStreamContext,
    room: str,
    llm_server: OpenAICompatibleDouble,
    drip_after: int,
) -> None:
    """Bytes keep coming (SSE comments every 0.1 s), words never do: a per-read timeout
    would wait for ever; an attempt is bounded as a whole."""
    llm_server.drip_after, llm_server.chunk_delay = drip_after, 0.1
    run = await talk(nats_server, js, room, llm_server, None)
    assert run.done()[0].failure == "llm_timeout"
    assert run.elapsed < 2 * 2.0 + 6


@pytest.mark.parametrize(("retry_after", "waited"), [("2", 2.0), ("600", 1.0)])
async def test_a_rate_limited_request_waits_for_retry_after_within_the_cap(
    nats_server: NatsServer,
    js: JetStreamContext,
    room: str,
    llm_server: OpenAICompatibleDouble,
    retry_after: str,
    waited: float,
) -> None:
    llm_server.fail_with, llm_server.retry_after = [429], retry_after
    run = (
        await talk(nats_server, js, room, llm_server, None, provider_max_retry_after_seconds=1.0)
        if retry_after == "600"
        else await talk(nats_server, js, room, llm_server, None)
    )
    first, second = llm_server.completions
    assert waited - 0.05 <= second.at - first.at < waited + 1.0
    assert [d.failure for d in run.done()] == [None]


async def test_a_failing_tts_is_reported_and_no_line_is_tried_through_it(
    nats_server: NatsServer,
    js: JetStreamContext,
    room: str,
    llm_server: OpenAICompatibleDouble,
    tts_server: CartesiaDouble,
) -> None:
    tts_server.fail_upgrade_with = 503
    run = await talk(nats_server, js, room, llm_server, tts_server)
    assert [d.failure for d in run.done()] == ["tts_server_error"]
    assert run.failures("tts", "server_error") == 1


async def test_a_tts_error_message_fails_the_reply(
    nats_server: NatsServer,
    js: JetStreamContext,
    room: str,
    llm_server: OpenAICompatibleDouble,
    tts_server: CartesiaDouble,
) -> None:
    tts_server.error = {"status_code": 500, "error": "Internal error", "done": True}
    run = await talk(nats_server, js, room, llm_server, tts_server)
    assert [d.failure for d in run.done()] == ["tts_error"]  # no fallback through that TTS
    assert run.failures("tts", "error") == 1
    assert tts_server.audio_bytes == 0


async def test_a_tts_that_stops_answering_fails_the_reply_within_the_attempt_timeouts(
    nats_server: NatsServer,
    js: JetStreamContext,
    room: str,
    llm_server: OpenAICompatibleDouble,
    tts_server: CartesiaDouble,
) -> None:
    tts_server.stall = True  # connected, takes the text, never sends audio or done
    run = await talk(nats_server, js, room, llm_server, tts_server)
    assert [d.failure for d in run.done()] == ["tts_timeout"]
    assert run.elapsed < 2 * 2.0 + 6  # provider_timeout_seconds=2, provider_retries=1


async def test_the_realtime_models_text_is_spoken_without_its_tags_and_reported(
    nats_server: NatsServer,
    js: JetStreamContext,
    room: str,
    realtime_server: OpenAIRealtimeDouble,
    tts_server: CartesiaDouble,
) -> None:
    run = await talk(nats_server, js, room, realtime_server, tts_server)
    assert_heard_without_tags(run, tts_server)
    assert realtime_server.models == ["gpt-realtime-mini"]
    (update, *_) = [e for e in realtime_server.received if e["type"] == "session.update"]
    assert update["session"]["output_modalities"] == ["text"]
    # The server keeps the conversation within AGENT_MAX_HISTORY_CHARS' worth of tokens.
    assert update["session"]["truncation"] == {
        "type": "retention_ratio",
        "retention_ratio": 0.8,
        "token_limits": {"post_instructions": 4000},
    }
    assert update["session"]["max_output_tokens"] == 1000  # AGENT_MAX_REPLY_TOKENS


@pytest.mark.parametrize("fault", ["failed", "error"])
async def test_a_realtime_reply_that_fails_is_a_failure_and_the_fallback_line_is_said(
    nats_server: NatsServer,
    js: JetStreamContext,
    room: str,
    realtime_server: OpenAIRealtimeDouble,
    tts_server: CartesiaDouble,
    fault: str,
) -> None:
    realtime_server.faults = [fault]  # a response.done "failed" / an error for response.create
    run = await talk(nats_server, js, room, realtime_server, tts_server)
    assert [d.failure for d in run.done()] == ["llm_server_error", None]  # then the fallback
    assert [line for line in tts_server.spoken() if line] == [FALLBACK]
    assert run.failures("llm", "server_error") == 1


async def test_a_realtime_reply_failing_once_heard_is_a_failure_without_the_fallback_line(
    nats_server: NatsServer,
    js: JetStreamContext,
    room: str,
    realtime_server: OpenAIRealtimeDouble,
    tts_server: CartesiaDouble,
) -> None:
    realtime_server.faults, realtime_server.fail_after = ["failed"], 12  # past the wave_hand tag
    run = await talk(nats_server, js, room, realtime_server, tts_server)
    assert [d.failure for d in run.done()] == ["llm_server_error"]
    spoken = " ".join(tts_server.spoken())
    assert "Hello from your own model!" in spoken
    assert "[" not in spoken
    assert FALLBACK not in spoken
    assert [e.name for e in run.events if isinstance(e, TagParsed)] == ["happy", "wave_hand"]


@pytest.mark.parametrize(
    ("reason", "after", "failure"),
    [
        ("content_filter", 0, "llm_content_filter"),  # nothing said: the fallback line
        ("max_output_tokens", 12, "llm_length"),  # heard up to the limit: no fallback
    ],
)
async def test_a_realtime_reply_that_ends_incomplete_is_a_failure(
    nats_server: NatsServer,
    js: JetStreamContext,
    room: str,
    realtime_server: OpenAIRealtimeDouble,
    tts_server: CartesiaDouble,
    reason: str,
    after: int,
    failure: str,
) -> None:
    realtime_server.faults, realtime_server.fail_after = [f"incomplete:{reason}"], after
    run = await talk(nats_server, js, room, realtime_server, tts_server)
    heard = after > 0
    assert [d.failure for d in run.done()] == [failure] + ([] if heard else [None])
    assert (FALLBACK in " ".join(tts_server.spoken())) is (not heard)
    assert run.failures("llm", failure.removeprefix("llm_")) == 1
